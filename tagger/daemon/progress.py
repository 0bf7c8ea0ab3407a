"""How far the daemon's start-up reconcile is, for the status file, `tagger status`, the log and
systemd's STATUS= line.

The daemon tells systemd READY=1 as soon as its watchers are up (new photos are queued from
then on, and units ordered after it need not wait a minute), but the library is up to date only
once every configured folder has been compared with the index: that is what this says.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

ReconcileState = Literal["reconciling", "up to date"]


class ReconcileProgress:
    """The start-up reconcile: the folders still to compare, files checked so far, and when it ended.

    `checked(n)` is the scan's progress callback (n more files compared with the index);
    `folder_done(folder)` is called once a folder's reconcile returned.
    """

    def __init__(
        self,
        folders: Iterable[Path],
        expected: int | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._left = set(folders)
        self.expected = expected  # files the index held at start: the estimate of the total
        self.files = 0
        self._clock, self._wall = clock, wall
        self._started = clock()
        self.seconds: float | None = None
        self.since: float | None = None  # wall-clock time it ended
        self._lock = threading.Lock()

    @property
    def state(self) -> ReconcileState:
        return "up to date" if self.since is not None else "reconciling"

    def checked(self, n: int) -> None:
        with self._lock:
            self.files += n

    def folder_done(self, folder: Path) -> bool:
        """True when this folder was the last one: the library is up to date from now."""
        with self._lock:
            if folder not in self._left:
                return False
            self._left.discard(folder)
            if self._left:
                return False
            self.seconds = self._clock() - self._started
            self.since = self._wall()
            return True

    def line(self) -> str:
        """`reconciling: 120,000 of ~300,000 files checked` or `up to date since 14:05`."""
        with self._lock:
            if self.since is not None:
                return f"up to date since {time.strftime('%H:%M', time.localtime(self.since))}"
            if self.expected:
                return f"reconciling: {self.files:,} of ~{max(self.expected, self.files):,} files checked"
            return f"reconciling: {self.files:,} files checked"

    def done_line(self) -> str:
        return f"library up to date: {self.files:,} files checked in {self.seconds or 0.0:.1f} s"

    def as_status(self) -> dict[str, object]:
        with self._lock:
            return {
                "state": self.state,
                "checked": self.files,
                "expected": self.expected,
                "folders_left": sorted(str(f) for f in self._left),
                "since": self.since,
                "seconds": None if self.seconds is None else round(self.seconds, 1),
            }
