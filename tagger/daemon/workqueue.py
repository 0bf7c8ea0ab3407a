"""The daemon's work queue: bounded, de-duplicated, and releasing only finished files.

Watcher threads put events in; the one worker thread takes `Work` out. A path changed
ten times in a second is one entry. A file is released once it was closed after
writing (or renamed into place) and has been quiet briefly, or, where no close event
can be seen (polling), once its mtime is `stable_seconds` old. Deletes wait out a grace
period so that a file moved out and back costs nothing.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SETTLE_SECONDS = 0.3  # after a close event: long enough for a writer that reopens at once



# One class per kind of work, as watchdog has one per kind of event: the daemon matches on them.
@dataclass(frozen=True)
class TagFiles:
    """Files written and left alone long enough: tag them (a batch)."""

    paths: tuple[Path, ...]


@dataclass(frozen=True)
class Move:
    """A file or folder renamed inside the library: its tags follow it."""

    src: Path
    dst: Path


@dataclass(frozen=True)
class Delete:
    """Files gone for the grace period: forget them."""

    paths: tuple[Path, ...]


@dataclass(frozen=True)
class DeleteTree:
    """A folder gone for the grace period: forget everything under it."""

    folder: Path


@dataclass(frozen=True)
class Reconcile:
    """A folder to compare with the index (at start, after an overflow, hourly): a scan of it."""

    folder: Path


Work = TagFiles | Move | Delete | DeleteTree | Reconcile


@dataclass
class _Pending:
    due: float
    last_event: float
    closed: bool
    writing: bool


class WorkQueue:
    def __init__(
        self,
        stable_seconds: float,
        open_timeout: float,
        delete_grace: float,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stable_seconds = stable_seconds
        self.open_timeout = open_timeout
        self.delete_grace = delete_grace
        self.limit = limit
        self._clock = clock
        self._lock = threading.Condition()
        self._pending: dict[Path, _Pending] = {}
        self._moves: deque[Work] = deque()
        self._deletes: dict[Path, tuple[float, bool]] = {}
        self._reconcile: dict[Path, None] = {}
        self._stopped = False
        self._interrupted = False
        self.overflowed = 0  # events turned into a reconcile because the queue was full

    # -- producers (watcher threads) ------------------------------------------------------

    def changed(self, path: Path, root: Path, *, closed: bool = False, writing: bool = False) -> None:
        """A file was created, written, closed or renamed into place."""
        with self._lock:
            now = self._clock()
            self._deletes.pop(path, None)
            entry = self._pending.get(path)
            if entry is None:
                if len(self._pending) >= self.limit:
                    self.overflowed += 1
                    self._reconcile[root] = None
                    self._lock.notify()
                    return
                entry = self._pending[path] = _Pending(now, now, closed, writing)
            if closed:
                entry.closed, entry.writing = True, False
            elif writing:
                entry.closed, entry.writing = False, True
            entry.last_event = now
            entry.due = now + (SETTLE_SECONDS if entry.closed else self.stable_seconds)
            self._lock.notify()

    def deleted(self, path: Path, *, is_dir: bool = False) -> None:
        with self._lock:
            self._drop_pending(path, is_dir)
            self._deletes[path] = (self._clock() + self.delete_grace, is_dir)
            self._lock.notify()

    def moved(self, src: Path, dst: Path, *, is_dir: bool = False) -> None:
        """Both ends inside the tree: the tags follow the file, in event order."""
        with self._lock:
            self._deletes.pop(dst, None)
            for old in [p for p in self._pending if p == src or (is_dir and src in p.parents)]:
                self._pending[dst / old.relative_to(src) if is_dir else dst] = self._pending.pop(old)
            self._moves.append(Move(src, dst))
            self._lock.notify()

    def reconcile(self, folder: Path) -> None:
        with self._lock:
            self._reconcile[folder] = None
            self._lock.notify()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    def interrupt(self) -> None:
        """Make a waiting `next_work` return None now (a reload is waiting)."""
        with self._lock:
            self._interrupted = True
            self._lock.notify_all()

    def configure(self, stable_seconds: float, open_timeout: float, delete_grace: float) -> None:
        with self._lock:
            self.stable_seconds, self.open_timeout, self.delete_grace = stable_seconds, open_timeout, delete_grace

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._moves) + len(self._deletes) + len(self._reconcile)

    def _drop_pending(self, path: Path, is_dir: bool) -> None:
        for p in [p for p in self._pending if p == path or (is_dir and path in p.parents)]:
            del self._pending[p]

    # -- the consumer (the worker thread) -------------------------------------------------

    def next_work(self, max_batch: int, timeout: float) -> Work | None:
        """The next thing to do, waiting at most `timeout`; None on timeout or stop.

        Moves come first (their order matters), then reconciles, due deletes, and
        finally a batch of finished files, which is never held back to fill up.
        """
        deadline = self._clock() + timeout
        with self._lock:
            while not self._stopped:
                if self._interrupted:
                    self._interrupted = False
                    return None
                work = self._take(max_batch)
                if work is not None:
                    return work
                now = self._clock()
                wake = min([deadline, *self._due_times()])
                if now >= deadline:
                    return None
                self._lock.wait(max(0.0, wake - now))
        return None

    def _due_times(self) -> list[float]:
        times = [p.due for p in self._pending.values()]
        times += [due for due, _ in self._deletes.values()]
        return [min(times)] if times else []

    def _take(self, max_batch: int) -> Work | None:
        if self._moves:
            return self._moves.popleft()
        if self._reconcile:
            folder = next(iter(self._reconcile))
            del self._reconcile[folder]
            return Reconcile(folder)
        now = self._clock()
        due_deletes = [(p, is_dir) for p, (due, is_dir) in self._deletes.items() if due <= now]
        if due_deletes:
            path, is_dir = due_deletes[0]
            if is_dir:
                del self._deletes[path]
                return DeleteTree(path)
            files = [p for p, d in due_deletes if not d]
            for p in files:
                del self._deletes[p]
            return Delete(tuple(files))
        ready: list[Path] = []
        for path, entry in list(self._pending.items()):
            if entry.due > now:
                continue
            if self._finished(path, entry, now):
                del self._pending[path]
                ready.append(path)
                if len(ready) >= max_batch:
                    break
        return TagFiles(tuple(ready)) if ready else None

    def _finished(self, path: Path, entry: _Pending, now: float) -> bool:
        """One stat: has the file been left alone long enough to be complete?"""
        if entry.writing and now - entry.last_event < self.open_timeout:
            entry.due = entry.last_event + self.open_timeout
            return False
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            del self._pending[path]  # gone already; its delete event does the rest
            return False
        quiet = SETTLE_SECONDS if entry.closed else self.stable_seconds
        age = time.time() - mtime
        if age < quiet:
            entry.due = now + (quiet - age)
            return False
        return True
