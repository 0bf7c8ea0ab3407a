"""One classifying process per index: `tagger run` and `tagger scan` share a lock file beside it.

Side by side, a daemon and a scan both classified the same new files (198 + 235 model runs
for 300 files). The lock file names its holder, so whoever cannot take it can say who has it:
a scan refuses to start beside a running daemon (the daemon tags those folders itself), and a
daemon started during a scan waits for the scan to finish instead of failing.
"""
from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from tagger.errors import TaggerError
from tagger.fileio import write_problem

log = logging.getLogger(__name__)

Holder = Literal["run", "scan"]
WAIT_STEP_SECONDS = 1.0


class IndexLocked(TaggerError):
    """Another `tagger run` or `tagger scan` is classifying into this index."""


def lock_path(index: Path) -> Path:
    return index.with_name(index.name + ".lock")


@contextmanager
def index_lock(index: Path, holder: Holder, wait: Callable[[float], bool] | None = None) -> Iterator[None]:
    """Hold the index's lock as `holder` ("run" or "scan").

    `wait(seconds)` (the daemon's stop event) makes a held lock worth waiting for while a scan
    holds it; it returns True to give up (stop requested). Without it, a held lock is an IndexLocked.
    """
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(index), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise TaggerError(f"{lock_path(index)}: cannot create the index's lock file: {write_problem(exc, index)}") from None
    try:
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                other, pid = _holder(fd)
                if wait is None or other != "scan":
                    raise IndexLocked(_refusal(index, holder, other, pid)) from None
                if not warned:
                    log.warning("%s: `tagger scan` (pid %s) is tagging into this index; waiting for it to finish", index, pid)
                    warned = True
                if wait(WAIT_STEP_SECONDS):
                    raise IndexLocked(f"{index}: stopped while waiting for `tagger scan` (pid {pid}) to finish")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder} {os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only its holder goes unnamed
        try:
            yield
        finally:
            try:
                os.ftruncate(fd, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> tuple[str, str]:
    """(run or scan, pid) of whoever holds the lock, as it wrote them; ("", "?") if unknown."""
    words = os.pread(fd, 100, 0).decode("ascii", "replace").split()
    return (words[0], words[1]) if len(words) == 2 else ("", "?")


def _refusal(index: Path, holder: Holder, other: str, pid: str) -> str:
    if holder == "scan" and other == "run":
        return (
            f"{index}: `tagger run` (pid {pid}) keeps this index up to date and tags its folders itself; "
            "a scan beside it would classify the same files twice. Let it work (restart it to reconcile now), "
            "or stop it before scanning"
        )
    if other == "scan":
        return f"{index}: `tagger scan` (pid {pid}) is already tagging into this index; wait for it to finish"
    return f"{index}: another `tagger run` (pid {pid}) is already using this index"
