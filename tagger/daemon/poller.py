"""Polling by folder mtimes: a folder is listed again only when it changed.

watchdog's PollingObserver takes a snapshot of every file on every poll (a stat and a statx
each, three dicts over the whole tree, then a diff of all of it): 26 CPU-seconds and up to
1.35 GB a poll at 300,000 files, and its `stat`/`listdir` hooks cannot skip a folder. Adding,
removing or renaming an entry changes the mtime and ctime of the folder holding it (local
filesystems, NFS, SMB/CIFS), so a poll stats each known folder and lists only those that
changed. A file rewritten in place changes no folder: the periodic reconcile finds it.

What is kept per folder is packed (names in one bytes object, inode/size/mtime in an array):
about 50 bytes a file.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

log = logging.getLogger(__name__)

# A folder whose mtime is this recent may change again within the same mtime tick (FAT keeps
# 2 s, some NFS servers 1 s): it is listed again on the next poll, as git treats "racy" entries.
RACY_SECONDS = 2.0
_SEP = os.sep.encode()

Key = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_ctime_ns of a folder
Stats = tuple[int, int, int]  # st_ino, st_size, st_mtime_ns of a file


@dataclass(slots=True)
class _Folder:
    key: Key
    racy: bool
    handler: FileSystemEventHandler
    names: bytes = b""  # file names joined by NUL
    stats: array[int] = field(default_factory=lambda: array("q"))  # inode, size, mtime_ns per file
    dirs: dict[bytes, int] = field(default_factory=dict)  # subfolder name -> inode
    top: bool = False  # added by name (a configured folder, or one inotify could not watch)
    missing: bool = False  # a top folder that is gone (an unmounted share): its state waits for it

    def files(self) -> dict[bytes, Stats]:
        if not self.names:
            return {}
        s = self.stats
        return {name: (s[3 * i], s[3 * i + 1], s[3 * i + 2]) for i, name in enumerate(self.names.split(b"\0"))}

    def keep(self, files: dict[bytes, Stats], dirs: dict[bytes, int]) -> None:
        self.names = b"\0".join(files)
        self.stats = array("q", [n for st in files.values() for n in st])
        self.dirs = dirs


@dataclass(frozen=True, slots=True)
class _Entry:
    path: bytes
    is_dir: bool
    handler: FileSystemEventHandler
    # What a rename keeps (a file's size and mtime, a folder's mtime): an inode freed by a delete and
    # given to a new file in the same poll is not taken for a move.
    fingerprint: tuple[int, ...] | None


@dataclass
class _Change:
    """One poll's differences, gathered over every changed folder before any event goes out,
    so that a rename from one folder to another is seen as a move."""

    gone: dict[tuple[int, int], _Entry] = field(default_factory=dict)  # by device and inode
    new: dict[tuple[int, int], _Entry] = field(default_factory=dict)
    modified: list[tuple[bytes, FileSystemEventHandler]] = field(default_factory=list)


def _key(info: os.stat_result) -> Key:
    return info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns


def _racy(mtime_ns: int) -> bool:
    return mtime_ns >= time.time_ns() - int(RACY_SECONDS * 1e9)


def _path(path: bytes) -> str:
    return os.fsdecode(path)


class FolderPoller:
    """Watches folders by polling their mtimes; one thread for every polled folder.

    `add` a folder with the handler its events go to: with `subfolders`, the folders under it
    are polled too (a configured polled folder); without, only the folder itself and the
    folders that appear in it later (a folder inotify could not watch: inotify tries its
    subfolders one by one).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._folders: dict[bytes, _Folder] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[bytes] = set()

    # -- what is polled ---------------------------------------------------------------------

    def add(self, folder: Path, handler: FileSystemEventHandler, *, subfolders: bool) -> None:
        """Poll `folder` from now on: listed at once, so that what follows is a change."""
        path = os.fsencode(folder)
        with self._lock:
            if path in self._folders:
                self._folders[path].top = True
                return
            entry = self._list_new(path, handler, subfolders=subfolders)
            if entry is not None:
                entry.top = True

    def remove(self, folder: Path, *, final_poll: bool = False, keep: Callable[[Path], bool] | None = None) -> None:
        """Stop polling `folder` and the folders under it, except those `keep` names (and theirs).
        `final_poll`: report what changed since the last poll first (inotify takes over now)."""
        path = os.fsencode(folder)
        with self._lock:
            under = [p for p in self._folders if p == path or p.startswith(path + _SEP)]
            kept = [p for p in under if keep is not None and keep(Path(_path(p)))]
            dropped = [p for p in under if not any(p == k or p.startswith(k + _SEP) for k in kept)]
            if final_poll:
                self._poll(dropped)
            for p in dropped:
                self._folders.pop(p, None)
                self._failing.discard(p)

    def folders(self) -> list[Path]:
        """Every folder polled now."""
        with self._lock:
            return [Path(_path(p)) for p in self._folders]

    def count_under(self, folder: Path) -> int:
        path = os.fsencode(folder)
        with self._lock:
            return sum(1 for p in self._folders if p == path or p.startswith(path + _SEP))

    # -- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tagger-poller", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """One pass: stat every folder, list those that changed, report the differences."""
        with self._lock:
            self._poll(list(self._folders))

    # -- one poll ---------------------------------------------------------------------------

    def _poll(self, paths: Iterable[bytes]) -> None:
        changed: list[tuple[bytes, Key]] = []
        for path in paths:
            entry = self._folders.get(path)
            if entry is None:
                continue
            try:
                key = _key(os.stat(path))
            except OSError as exc:
                self._unreachable(path, entry, exc)
                continue
            if path in self._failing:
                self._failing.discard(path)
                log.info("%s: can be polled again", _path(path))
            if key != entry.key or entry.racy:
                changed.append((path, key))
        change = _Change()
        for path, key in changed:
            entry = self._folders.get(path)
            if entry is not None:  # not dropped meanwhile, as under a folder gone
                self._relist(path, entry, key, change)
        self._report(change)

    def _unreachable(self, path: bytes, entry: _Folder, exc: OSError) -> None:
        """A folder that cannot be stat'ed: gone (its parent's listing reports it; a top folder
        waits for its return), or unreachable for now (a share down: tried again next poll)."""
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            if entry.top and not entry.missing:
                entry.missing = True
                entry.handler.dispatch(DirDeletedEvent(_path(path)))
            return
        if path not in self._failing:
            self._failing.add(path)
            log.warning("%s: cannot poll this folder (%s); trying again every %.0f s", _path(path), exc.strerror or exc,
                        self.interval)

    def _listing(self, path: bytes) -> tuple[dict[bytes, Stats], dict[bytes, int]]:
        files: dict[bytes, Stats] = {}
        dirs: dict[bytes, int] = {}
        with os.scandir(path) as entries:
            for item in entries:
                try:
                    if item.is_dir(follow_symlinks=False):
                        dirs[item.name] = item.inode()
                    else:
                        info = item.stat(follow_symlinks=False)
                        files[item.name] = (info.st_ino, info.st_size, info.st_mtime_ns)
                except OSError:
                    continue  # gone between the listing and the stat
        return files, dirs

    def _list_new(self, path: bytes, handler: FileSystemEventHandler, *, subfolders: bool) -> _Folder | None:
        """A folder polled from now on (and, with `subfolders`, every folder under it), listed now."""
        try:
            info = os.stat(path)
            if not stat.S_ISDIR(info.st_mode):
                return None
            files, dirs = self._listing(path)
        except OSError as exc:
            log.warning("%s: cannot list this folder to poll it (%s)", _path(path), exc.strerror or exc)
            return None
        entry = _Folder(_key(info), _racy(info.st_mtime_ns), handler)
        entry.keep(files, dirs)
        self._folders[path] = entry
        if subfolders:
            for name in dirs:
                child = path + _SEP + name
                if child not in self._folders:
                    self._list_new(child, handler, subfolders=True)
        return entry

    def _relist(self, path: bytes, entry: _Folder, key: Key, change: _Change) -> None:
        try:
            files, dirs = self._listing(path)
        except (FileNotFoundError, NotADirectoryError):
            return  # gone since its stat: next poll
        except OSError as exc:
            self._unreachable(path, entry, exc)
            return
        if entry.missing:
            entry.missing = False
            entry.handler.dispatch(DirCreatedEvent(_path(path)))  # back: reconciled
        entry.racy = _racy(key[2])
        entry.key = key
        old = entry.files()
        device = key[0]
        handler = entry.handler
        for name, st in old.items():
            now = files.get(name)
            if now is None:
                change.gone[(device, st[0])] = _Entry(path + _SEP + name, False, handler, st[1:])
            elif now != st:
                change.modified.append((path + _SEP + name, handler))
        for name, st in files.items():
            if name not in old:
                change.new[(device, st[0])] = _Entry(path + _SEP + name, False, handler, st[1:])
        for name, inode in entry.dirs.items():
            if name not in dirs:
                known = self._folders.get(path + _SEP + name)
                change.gone[(device, inode)] = _Entry(path + _SEP + name, True, handler,
                                                      None if known is None else (known.key[2],))
        for name, inode in dirs.items():
            if name not in entry.dirs:
                try:
                    mtime: tuple[int, ...] | None = (os.stat(path + _SEP + name, follow_symlinks=False).st_mtime_ns,)
                except OSError:
                    mtime = None
                change.new[(device, inode)] = _Entry(path + _SEP + name, True, handler, mtime)
        entry.keep(files, dirs)

    def _report(self, change: _Change) -> None:
        """Moves first (matched by inode), then deletions, then what is new or changed."""
        events: list[tuple[FileSystemEventHandler, FileSystemEvent]] = []
        for inode, gone in list(change.gone.items()):
            new = change.new.get(inode)
            if new is None or new.is_dir != gone.is_dir or gone.fingerprint is None or new.fingerprint != gone.fingerprint:
                continue
            del change.gone[inode], change.new[inode]
            if gone.is_dir:
                self._rename_under(gone.path, new.path)
                events.append((new.handler, DirMovedEvent(_path(gone.path), _path(new.path))))
            else:
                events.append((new.handler, FileMovedEvent(_path(gone.path), _path(new.path))))
        for gone in change.gone.values():
            if gone.is_dir:
                self._drop_under(gone.path)
                events.append((gone.handler, DirDeletedEvent(_path(gone.path))))
            else:
                events.append((gone.handler, FileDeletedEvent(_path(gone.path))))
        for new in change.new.values():
            if new.is_dir:  # the new folder is reconciled whole (the handler's DirCreatedEvent); polled from now on
                if new.path not in self._folders:
                    self._list_new(new.path, new.handler, subfolders=True)
                events.append((new.handler, DirCreatedEvent(_path(new.path))))
            else:
                events.append((new.handler, FileCreatedEvent(_path(new.path))))
        events += [(handler, FileModifiedEvent(_path(p))) for p, handler in change.modified]
        for handler, event in events:
            handler.dispatch(event)

    def _under(self, path: bytes) -> list[bytes]:
        return [p for p in self._folders if p == path or p.startswith(path + _SEP)]

    def _drop_under(self, path: bytes) -> None:
        for p in self._under(path):
            del self._folders[p]
            self._failing.discard(p)

    def _rename_under(self, src: bytes, dst: bytes) -> None:
        """A folder renamed inside the polled tree keeps what is known of it and under it."""
        for p in self._under(src):
            self._folders[dst + p[len(src):]] = self._folders.pop(p)
