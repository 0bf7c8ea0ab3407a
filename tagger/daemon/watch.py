"""Watching folders with watchdog: filter, classify the event, enqueue. Nothing else.

Local folders use inotify; network mounts (where inotify never hears about changes made
on another machine) are polled. The watcher restarts a dead observer and turns an
inotify queue overflow or watch-limit error into a reconcile, never silent misses.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from tagger.config import WatchConfig
from tagger.fileio import in_skipped_folder, is_image_name, skipped_folder
from tagger.library.jsonsidecar import is_sidecar
from tagger.daemon.workqueue import WorkQueue

log = logging.getLogger(__name__)

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
        "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.davfs2", "davfs", "fuse.glusterfs",
        "fuse.cephfs", "fuse.juicefs", "fuse.gvfsd-fuse", "fuse.smbnetfs", "fuse.curlftpfs",
    }
)
# watchdog lists a watched tree with os.walk (inotify) or its own recursive snapshot (polling), one
# Python frame per folder level; Python 3.11 stops at 1000 and the watch failed with RecursionError
# on a chain of 1,000 nested folders. A path Linux opens is at most 4096 bytes: 2048 levels.
WALK_RECURSION = 6000
TEMP_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".temp", "~", ".swp")


def is_candidate(path: Path) -> bool:
    """An image file we should tag: not hidden, temporary, NAS bookkeeping or our own sidecar."""
    if in_skipped_folder(path) or path.name.startswith("."):
        return False  # dot-files and rsync's .name.a1B2c3 temporaries; .stfolder, @eaDir, #recycle ...
    name = path.name.lower()
    return not name.endswith(TEMP_SUFFIXES) and not is_sidecar(path) and is_image_name(path)


def is_candidate_dir(path: Path) -> bool:
    return not any(skipped_folder(part) for part in path.parts[1:])


def filesystem_type(folder: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding `folder`, from /proc/self/mounts (longest mount point)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "unknown"
    target = os.path.realpath(folder)
    best, best_type = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


def choose_mode(folder: Path, config: WatchConfig, mounts: str | None = None) -> str:
    """inotify or polling for one folder: forced by config, else by its filesystem type."""
    if str(folder) in config.polling_folders or config.mode == "polling":
        return "polling"
    if config.mode == "inotify":
        return "inotify"
    fstype = filesystem_type(folder, mounts)
    return "polling" if fstype in NETWORK_FILESYSTEMS else "inotify"


class _Handler(FileSystemEventHandler):
    """Turns watchdog events for one folder into queue entries."""

    def __init__(self, queue: WorkQueue, root: Path, sees_close: bool) -> None:
        self.queue = queue
        self.root = root
        self.sees_close = sees_close

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = Path(os.fsdecode(event.src_path))
        if isinstance(event, FileMovedEvent):
            self._file_moved(src, Path(os.fsdecode(event.dest_path)))
        elif isinstance(event, DirMovedEvent):
            dst = Path(os.fsdecode(event.dest_path))
            if is_candidate_dir(src) and is_candidate_dir(dst):
                self.queue.moved(src, dst, is_dir=True)
            elif is_candidate_dir(dst):
                self.queue.reconcile(dst)
            elif is_candidate_dir(src):
                self.queue.deleted(src, is_dir=True)
        elif isinstance(event, DirCreatedEvent):
            if is_candidate_dir(src):
                self.queue.reconcile(src)  # files may land before the new folder's watch exists
        elif isinstance(event, DirDeletedEvent):
            if src == self.root:
                log.warning("%s: watched folder disappeared (unmounted?); it is reconciled when it is back", src)
                self.queue.reconcile(src)
            elif is_candidate_dir(src):
                self.queue.deleted(src, is_dir=True)
        elif not is_candidate(src):
            return
        elif isinstance(event, FileClosedEvent):
            self.queue.changed(src, self.root, closed=True)
        elif isinstance(event, FileModifiedEvent):
            self.queue.changed(src, self.root, writing=self.sees_close)
        elif isinstance(event, FileCreatedEvent):
            self.queue.changed(src, self.root)
        elif isinstance(event, FileDeletedEvent):
            self.queue.deleted(src)

    def _file_moved(self, src: Path, dst: Path) -> None:
        src_ok, dst_ok = is_candidate(src), is_candidate(dst)
        if src_ok and dst_ok:
            self.queue.moved(src, dst)
        elif dst_ok:  # write-then-rename (rsync, editors, browsers): tag it once, under its final name
            self.queue.changed(dst, self.root, closed=True)
        elif src_ok:
            self.queue.deleted(src)


@dataclass
class _Watch:
    folder: Path
    mode: str
    observer: BaseObserver
    watch: ObservedWatch


class _OverflowListener(logging.Handler):
    """watchdog reports an inotify queue overflow only in its log: turn that into reconciles."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.watcher.on_overflow()


class Watcher:
    """One observer per watching mode; one watch per configured folder."""

    def __init__(self, queue: WorkQueue, config: WatchConfig) -> None:
        self.queue = queue
        self.config = config
        self._observers: dict[str, BaseObserver] = {}
        self._watches: dict[Path, _Watch] = {}
        self._overflow = _OverflowListener(self)
        sys.setrecursionlimit(max(sys.getrecursionlimit(), WALK_RECURSION))
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow)
        logging.getLogger("watchdog.observers.inotify").addHandler(self._overflow)

    @property
    def folders(self) -> dict[Path, str]:
        return {folder: w.mode for folder, w in self._watches.items()}

    def watch(self, folders: Iterable[Path]) -> None:
        """Watch exactly these folders: start new ones, stop removed ones."""
        wanted = list(folders)
        for folder in [f for f in self._watches if f not in wanted]:
            self._unwatch(folder)
        for folder in wanted:
            if folder not in self._watches:
                self._start(folder, choose_mode(folder, self.config))

    def _observer(self, mode: str) -> BaseObserver:
        observer = self._observers.get(mode)
        if observer is None or not observer.is_alive():
            observer = PollingObserver(timeout=self.config.poll_interval) if mode == "polling" else InotifyObserver()
            observer.daemon = True
            observer.start()
            self._observers[mode] = observer
        return observer

    def _start(self, folder: Path, mode: str) -> None:
        handler = _Handler(self.queue, folder, sees_close=mode == "inotify")
        observer = self._observer(mode)
        try:
            watch = observer.schedule(handler, str(folder), recursive=True)
        except OSError as exc:
            if mode == "inotify" and exc.errno in (errno.ENOSPC, errno.EMFILE):
                log.error(
                    "%s: inotify watch limit reached (%s); polling this folder instead. Raise the limit with "
                    "`sysctl fs.inotify.max_user_watches=524288` (and fs.inotify.max_user_instances), "
                    "then reload tagger",
                    folder,
                    exc.strerror,
                )
                self.queue.reconcile(folder)
                self._start(folder, "polling")
                return
            raise
        self._watches[folder] = _Watch(folder, mode, observer, watch)
        log.info("watching %s (%s)", folder, mode)

    def _unwatch(self, folder: Path) -> None:
        entry = self._watches.pop(folder)
        try:
            entry.observer.unschedule(entry.watch)
        except (KeyError, RuntimeError, OSError):
            pass
        log.info("stopped watching %s", folder)

    def on_overflow(self) -> None:
        log.error(
            "inotify event queue overflowed: events were lost; reconciling the inotify folders. "
            "Raise the queue with `sysctl fs.inotify.max_queued_events=65536`"
        )
        for folder, entry in self._watches.items():
            if entry.mode == "inotify":
                self.queue.reconcile(folder)

    def supervise(self) -> None:
        """Restart any observer or emitter thread that died, then reconcile what it watched."""
        for mode, observer in list(self._observers.items()):
            dead_emitters = [e for e in observer.emitters if not e.is_alive()]
            if observer.is_alive() and not dead_emitters:
                continue
            folders = [f for f, w in self._watches.items() if w.mode == mode]
            log.error("%s watcher thread died; restarting it for %s", mode, ", ".join(map(str, folders)))
            for folder in folders:
                del self._watches[folder]
            try:
                observer.stop()
            except RuntimeError:
                pass
            del self._observers[mode]
            for folder in folders:
                self._start(folder, mode)
                self.queue.reconcile(folder)

    def stop(self) -> None:
        logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._overflow)
        logging.getLogger("watchdog.observers.inotify").removeHandler(self._overflow)
        for observer in self._observers.values():
            observer.stop()
        for observer in self._observers.values():
            if observer.is_alive():
                observer.join(timeout=10)
        self._observers.clear()
        self._watches.clear()
