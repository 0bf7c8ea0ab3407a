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
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
from watchdog.observers.inotify import (
    InotifyEmitter,
    InotifyObserver,
    InotifyWatchGroup,
)
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyFD,
    Mask,
    WatchCallback,
    WatchDescriptor,
)

from tagger.config import WatchConfig
from tagger.daemon.poller import FolderPoller
from tagger.daemon.workqueue import WorkQueue
from tagger.fileio import in_skipped_folder, is_image_name, skipped_folder
from tagger.library.jsonsidecar import is_sidecar

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


Watching = Literal["inotify", "polling"]


def choose_mode(folder: Path, config: WatchConfig, mounts: str | None = None) -> Watching:
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
    mode: Watching  # how the folder itself is watched
    observer: BaseObserver | None = None  # None: polled
    watch: ObservedWatch | None = None
    limited: bool = False  # polled because the inotify watch limit refused the folder itself


class _OverflowListener(logging.Handler):
    """watchdog reports an inotify queue overflow only in its log: turn that into reconciles."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.watcher.on_overflow()


class _LimitWarnings(logging.Filter):
    """watchdog's own line for a folder past the watch limit: ours names the fix, and says it is polled."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(a, OSError) and a.errno in LIMIT_ERRORS for a in args)


LIMIT_ERRORS = (errno.ENOSPC, errno.EMFILE)
LIMIT_LINES = 5  # folders named one by one in the log per root; past that, one line and `tagger status` count them
_LIMIT_FILES = ("/proc/sys/fs/inotify/max_user_watches", "/proc/sys/user/max_inotify_watches")


def watch_limit() -> int | None:
    """The inotify watch limit in force (the lower of the system's and this user namespace's)."""
    values = []
    for name in _LIMIT_FILES:
        try:
            values.append(int(Path(name).read_text()))
        except (OSError, ValueError):
            continue
    return min(values) if values else None


class _LimitedInotifyFD(InotifyFD):
    """watchdog's inotify reader, telling which folders the watch limit kept out."""

    def __init__(self, refused: Callable[[bytes], None]) -> None:
        super().__init__()
        self.refused = refused

    def add_callback(self, path: bytes, mask: Mask, callback: WatchCallback, id_: CallbackId) -> WatchDescriptor:
        try:
            return super().add_callback(path, mask, callback, id_)
        except OSError as exc:
            if exc.errno in LIMIT_ERRORS:
                self.refused(path)
            raise


class _TolerantGroup(InotifyWatchGroup):
    """A watched tree. Past the watch limit while running, watchdog leaves a new folder out and
    goes on; at start it gave up on the whole tree. Here start-up does as running does: the
    folders past the limit are left out (and polled), the rest is watched."""

    def _activate(self) -> None:
        with self._lock:
            if self.is_active:
                return
            self._is_active = True
            try:
                self._add_all_callbacks(self.path)
            except OSError:
                self._is_active = False
                self._remove_callbacks(list(self._nodes_by_wd))
                raise

    def watch_again(self, paths: Iterable[bytes]) -> None:
        with self._lock:
            for path in paths:
                if self.is_active and os.path.isdir(path):
                    self._add_all_callbacks(path)


class _Emitter(InotifyEmitter):
    def on_thread_start(self) -> None:
        self._inotify = _TolerantGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
        )

    def watch_again(self, paths: Iterable[bytes]) -> None:
        """Try again to watch folders the limit refused (after it was raised)."""
        group = self._inotify
        if isinstance(group, _TolerantGroup):
            group.watch_again(paths)


class _InotifyObserver(InotifyObserver):
    """watchdog's InotifyObserver, whose trees report the folders past the watch limit."""

    def __init__(self, refused: Callable[[bytes], None]) -> None:
        super().__init__()
        fd = _LimitedInotifyFD(refused)
        fd.start()
        self._inotify_fd = fd
        self._emitter_class = _Emitter
        self._emitter_kwargs["inotify_fd"] = fd


class Watcher:
    """One inotify observer and one folder poller; one watch per configured folder.

    A folder inotify cannot watch (the watch limit reached, at start or later) is polled,
    that folder only; a reload tries inotify again for it.
    """

    def __init__(self, queue: WorkQueue, config: WatchConfig) -> None:
        self.queue = queue
        self.config = config
        self._inotify: _InotifyObserver | None = None
        self._poller = FolderPoller(config.poll_interval)
        self._watches: dict[Path, _Watch] = {}
        self._polled_handlers: dict[Path, _Handler] = {}
        self._refused: dict[Path, set[Path]] = {}  # root -> folders under it past the watch limit
        self._limit_lines: dict[Path, int] = {}
        self._lock = threading.RLock()  # watch, reload and supervise (the daemon's thread)
        self._refused_lock = threading.Lock()  # what the watch limit refused (also watchdog's thread)
        self._overflow = _OverflowListener(self)
        self._limit_filter = _LimitWarnings()
        sys.setrecursionlimit(max(sys.getrecursionlimit(), WALK_RECURSION))
        for name in _WATCHDOG_LOGGERS:
            logging.getLogger(name).addHandler(self._overflow)
            logging.getLogger(name).addFilter(self._limit_filter)

    @property
    def folders(self) -> dict[Path, str]:
        return {folder: w.mode for folder, w in self._watches.items()}

    def past_limit(self) -> dict[Path, int]:
        """Per configured folder, how many of its folders are polled because of the inotify watch limit."""
        with self._refused_lock:
            limited = [root for root, w in list(self._watches.items()) if w.limited]
            refused = {root: list(folders) for root, folders in self._refused.items() if folders}
        counts = {root: self._poller.count_under(root) for root in limited}
        counts |= {root: sum(self._poller.count_under(f) for f in folders) for root, folders in refused.items()}
        return {root: n for root, n in counts.items() if n}

    def watch(self, folders: Iterable[Path]) -> None:
        """Watch exactly these folders: start new ones, stop removed ones, and try inotify again
        where its watch limit got in the way (a reload after the limit was raised)."""
        wanted = list(folders)
        with self._lock:
            self._poller.interval = self.config.poll_interval
            for folder in [f for f in self._watches if f not in wanted]:
                self._unwatch(folder)
            for folder in wanted:
                entry = self._watches.get(folder)
                if entry is None:
                    self._start(folder, choose_mode(folder, self.config))
                elif (entry.limited or self._refused.get(folder)) and choose_mode(folder, self.config) == "inotify":
                    self._watch_again(folder)
            if not self._poller.is_alive():
                self._poller.start()

    def _observer(self) -> _InotifyObserver:
        if self._inotify is None or not self._inotify.is_alive():
            observer = _InotifyObserver(self._on_refused)
            observer.daemon = True
            observer.start()
            self._inotify = observer
        return self._inotify

    def _start(self, folder: Path, mode: Watching) -> None:
        self._poller.remove(folder)
        with self._refused_lock:
            self._refused[folder] = set()
            self._limit_lines[folder] = 0
            self._polled_handlers[folder] = _Handler(self.queue, folder, sees_close=False)
        if mode == "inotify":
            try:
                observer = self._observer()
                watch = observer.schedule(_Handler(self.queue, folder, sees_close=True), str(folder), recursive=True)
            except OSError as exc:
                if exc.errno not in LIMIT_ERRORS:
                    raise
                self._poller.remove(folder)
                self._refused[folder] = set()
                self._say_limit(folder, folder, exc)
                self.queue.reconcile(folder)
                self._poller.add(folder, self._polled_handlers[folder], subfolders=True)
                self._watches[folder] = _Watch(folder, "polling", limited=True)
                return
            self._watches[folder] = _Watch(folder, "inotify", observer, watch)
        else:
            self._poller.add(folder, self._polled_handlers[folder], subfolders=True)
            self._watches[folder] = _Watch(folder, "polling")
        with self._refused_lock:
            polled = len(self._refused[folder])
            self._limit_lines[folder] = 0  # while running, new folders past the limit are named again
        if polled > LIMIT_LINES:
            log.warning("%s: %d folders past the inotify watch limit are polled (`tagger status` counts them)",
                        folder, polled)
        log.info("watching %s (%s)", folder, mode)

    def _on_refused(self, path: bytes) -> None:
        """inotify could not watch this folder (watch limit): poll it, that folder only."""
        folder = Path(os.fsdecode(path))
        with self._refused_lock:  # not self._lock: this runs in watchdog's thread, holding its own lock
            root = next((r for r in self._refused if r in folder.parents), None)
            if root is None:
                return  # the configured folder itself: its schedule raises, and _start polls it all
            self._refused[root].add(folder)
            handler = self._polled_handlers[root]
        self._poller.add(folder, handler, subfolders=False)
        self._say_limit(root, folder, None)

    def _say_limit(self, root: Path, folder: Path, exc: OSError | None) -> None:
        with self._refused_lock:
            said = self._limit_lines[root] = self._limit_lines.get(root, 0) + 1
        if said == LIMIT_LINES + 1 and self._watches.get(root) is not None:  # while running
            log.warning("%s: more folders past the inotify watch limit are polled, without a line each "
                        "(`tagger status` counts them)", root)
        if said > LIMIT_LINES:
            return
        if exc is not None and exc.errno == errno.EMFILE:
            reason, fix = "inotify instance limit reached", "fs.inotify.max_user_instances=1024"
        else:
            reason = f"inotify watch limit reached (fs.inotify.max_user_watches = {watch_limit() or 'unknown'})"
            fix = "fs.inotify.max_user_watches=524288"
        log.error(  # as before: the user has something to do (journalctl -p err shows it)
            "%s: %s; this folder is polled every %g s instead. Raise the limit with `sysctl %s` "
            "(and a file in /etc/sysctl.d/ to keep it), then reload tagger (SIGHUP) to watch it with inotify again",
            folder, reason, self.config.poll_interval, fix,
        )

    def _watch_again(self, root: Path) -> None:
        """The limit may have been raised: inotify for what it refused; polled only what it still refuses."""
        entry = self._watches[root]
        before = self.past_limit().get(root, 0)
        with self._refused_lock:
            self._limit_lines[root] = LIMIT_LINES  # one summary line below, not one per folder again
        if entry.limited:
            try:
                observer = self._observer()
                watch = observer.schedule(_Handler(self.queue, root, sees_close=True), str(root), recursive=True)
            except OSError as exc:
                if exc.errno not in LIMIT_ERRORS:
                    raise
                log.warning("%s: still past the inotify watch limit (%s); still polled", root, exc.strerror or exc)
                return
            self._watches[root] = _Watch(root, "inotify", observer, watch)
            refused = self._refused[root]
            self._poller.remove(root, final_poll=True, keep=lambda p: p in refused)
        else:
            assert entry.observer is not None
            with self._refused_lock:
                again = sorted(self._refused[root])
                refused = self._refused[root] = set()
                self._limit_lines[root] = LIMIT_LINES
            emitter = next((e for e in entry.observer.emitters if e.watch == entry.watch), None)
            if isinstance(emitter, _Emitter):
                emitter.watch_again(os.fsencode(f) for f in again)
            for folder in again:
                if folder not in refused:
                    self._poller.remove(folder, final_poll=True, keep=lambda p: p in refused)
        after = self.past_limit().get(root, 0)
        with self._refused_lock:
            self._limit_lines[root] = 0
        if after:
            log.warning("%s: inotify watches %d more folders; %d are still polled (past the watch limit)",
                        root, before - after, after)
        else:
            log.info("%s: watched with inotify again, all of it (%d folders were polled)", root, before)

    def _unwatch(self, folder: Path) -> None:
        entry = self._watches.pop(folder)
        if entry.observer is not None and entry.watch is not None:
            try:
                entry.observer.unschedule(entry.watch)
            except (KeyError, RuntimeError, OSError):
                pass
        self._poller.remove(folder)
        with self._refused_lock:
            self._refused.pop(folder, None)
            self._polled_handlers.pop(folder, None)
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
        """Restart the inotify observer or poller thread if it died, then reconcile what it watched."""
        with self._lock:
            observer = self._inotify
            if observer is not None and (not observer.is_alive() or any(not e.is_alive() for e in observer.emitters)):
                folders = [f for f, w in self._watches.items() if w.mode == "inotify"]
                log.error("inotify watcher thread died; restarting it for %s", ", ".join(map(str, folders)))
                for folder in folders:
                    del self._watches[folder]
                try:
                    observer.stop()
                except RuntimeError:
                    pass
                self._inotify = None
                for folder in folders:
                    self._start(folder, "inotify")
                    self.queue.reconcile(folder)
            if self._watches and not self._poller.is_alive():
                polled = [f for f in self._watches if self._poller.count_under(f)]
                log.error("polling thread died; restarting it for %s", ", ".join(map(str, polled)))
                self._poller.start()
                for folder in polled:
                    self.queue.reconcile(folder)

    def stop(self) -> None:
        for name in _WATCHDOG_LOGGERS:
            logging.getLogger(name).removeHandler(self._overflow)
            logging.getLogger(name).removeFilter(self._limit_filter)
        self._poller.stop()
        if self._inotify is not None:
            self._inotify.stop()
            if self._inotify.is_alive():
                self._inotify.join(timeout=10)
        self._inotify = None
        self._watches.clear()


_WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")
