"""A scan's listing: the library walked one folder at a time, each folder compared with the index's
rows for that folder.

Memory is the largest folder's, not the library's: a scan once listed every file first and kept a
set of those seen, about 0.6 KB a file (0.8 GB at a million). An unchanged file costs one stat: its
row's size, mtime, ctime and inode are compared with it, and its sidecars looked up in the folder's
listing. Files gone are dropped folder by folder; a subfolder the index knows but the walk does not
enter (deleted, renamed, hidden now), a page of rows at a time.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tagger.fileio import is_empty_folder, list_folder, shown
from tagger.index import Index
from tagger.index.records import FileStamp, FolderRow
from tagger.library.places import sidecar_folder
from tagger.library.recorder import Recorder
from tagger.library.summary import ScanSummary

log = logging.getLogger(__name__)

LEFTOVER_AGE = 60.0  # seconds: a sidecar is written in milliseconds; a temporary file this old was abandoned
GONE_PAGE = 500  # rows of a vanished subfolder looked at, and dropped, at a time


class LibraryWalk:
    """The paths under some roots that need work, produced folder by folder as a backend takes them;
    unchanged files are counted, and rows of files gone dropped, on the way."""

    def __init__(
        self,
        store: Index,
        recorder: Recorder,
        model: str,
        summary: ScanSummary,
        on_progress: Callable[[int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        defer_recent: tuple[Callable[[Path], None], float] | None = None,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.model = model
        self.summary = summary
        self.on_progress = on_progress
        self.cancelled = cancelled
        self.defer_recent = defer_recent

    def paths(self, roots: Sequence[Path], prune: bool = False) -> Iterator[Path]:
        """Files to read, root by root. Without `prune`, a root that is empty now while the index holds
        files in it is left alone: an unmounted share leaves its empty mount point, and dropping the
        whole library then cost a re-read of every file when it came back."""
        for root in roots:
            if not root.is_dir():
                self.summary.files += 1
                yield root
                continue
            if not prune and is_empty_folder(root) and (held := self.store.count_under(str(root))):
                log.warning(
                    "%s: the folder is empty, but the index holds %d files in it: taken for an unmounted share, "
                    "nothing is removed (if they were deleted: tagger scan --prune)", shown(root), held
                )
                continue
            pending = [root]  # folders still to walk, the next one last: no recursion, whatever the depth
            while pending and not (self.cancelled is not None and self.cancelled()):
                folder = pending.pop()
                yield from self._folder(folder, pending)

    def _folder(self, folder: Path, pending: list[Path]) -> Iterator[Path]:
        """One folder's files that need work; its subfolders go on `pending`."""
        try:
            listing = list_folder(folder)
        except OSError as exc:
            log.warning("%s: cannot list this folder (%s); its files stay in the index as they were",
                        shown(folder), exc.strerror or exc)
            return
        remove_leftovers([folder / name for name in listing.leftovers])
        rows, indexed = self.store.folder_rows(str(folder))
        mirror = self.recorder.config.sidecar.folder
        sidecars = listing.names if mirror is None else _names_in(sidecar_folder(folder / "x", mirror))
        cutoff = time.time() - self.defer_recent[1] if self.defer_recent is not None else None
        stamps: list[tuple[str, FileStamp]] = []
        repaired: list[tuple[str, str | None]] = []
        unchanged = 0
        for name in listing.images:
            path = folder / name
            row = rows.pop(name, None)
            try:
                info: os.stat_result | None = os.stat(path)
            except OSError:
                info = None  # the reader says why (a broken symlink, a permission), or forgets it
            if row is not None and info is not None and self._unchanged(row, info, name, sidecars):
                unchanged += 1
                if row.ctime_ns is None:  # a row from before ctime and inode were kept: given them, no read
                    stamps.append((str(path), FileStamp(info.st_ctime_ns, info.st_ino)))
                where = self.recorder.sidecar_of(path) if row.status == "tagged" else None
                if where is not None and row.sidecar != where:
                    repaired.append((str(path), where))  # its folder renamed under an older tagger
                continue
            if self.defer_recent is not None and info is not None and cutoff is not None and info.st_mtime > cutoff:
                self.defer_recent[0](path)  # may still be growing: the daemon tags it once it is still
                continue
            self.summary.files += 1
            yield path
        self.summary.files += unchanged
        self.summary.unchanged += unchanged
        if self.on_progress is not None and unchanged:
            self.on_progress(unchanged)
        if stamps or repaired:
            with self.store.transaction("the ctime, inode and sidecar path of unchanged files"):
                self.store.save_stamps(stamps)
                self.store.save_sidecars(repaired)
        if rows:  # indexed, not found now
            self.summary.removed += self.recorder.forget([folder / name for name in rows])
        entered = set(listing.folders)
        for name in indexed:
            if name not in entered:
                self.summary.removed += self._forget_gone_under(folder / name)
        pending.extend(folder / name for name in reversed(listing.folders))

    def _unchanged(self, row: FolderRow, info: os.stat_result, name: str, sidecars: frozenset[str]) -> bool:
        """As Reader's check: size, mtime, ctime and inode as recorded (a restore or `rsync --times` puts
        another photo in place with the same size and mtime, but a new ctime and inode); tagged by this
        model with its sidecars there, or failed."""
        if row.size != info.st_size or row.mtime_ns != info.st_mtime_ns:
            return False
        if row.ctime_ns is not None and (row.ctime_ns, row.inode) != (info.st_ctime_ns, info.st_ino):
            return False
        return row.status == "failed" or (row.model == self.model and self.recorder.sidecars_listed(name, sidecars))

    def _forget_gone_under(self, folder: Path) -> int:
        """Rows of a subfolder the walk does not enter: those whose file is gone are dropped (forget
        checks each), a page at a time; a hidden or symlinked folder's files that are there stay."""
        removed, after = 0, None
        while page := self.store.paths_after(str(folder), after, GONE_PAGE):
            after = page[-1]
            removed += self.recorder.forget([Path(p) for p in page])
        return removed


def _names_in(folder: Path) -> frozenset[str]:
    """The names in a sidecar folder of the mirror tree; none when it is not there (yet)."""
    try:
        return frozenset(os.listdir(folder))
    except OSError:
        return frozenset()


def remove_leftovers(paths: Sequence[Path]) -> int:
    """Delete the temporary sidecar files a killed run left (tagger.fileio.LEFTOVER), once they are
    older than LEFTOVER_AGE (a writer at work right now is not disturbed); how many went."""
    cutoff, removed = time.time() - LEFTOVER_AGE, 0
    for path in paths:
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError as exc:
            log.warning("%s: a killed run's temporary file, not removed: %s", shown(path), exc.strerror or exc)
    if removed:
        log.info("removed %d temporary sidecar files that a killed run left", removed)
    return removed
