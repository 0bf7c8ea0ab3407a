"""Wires the stages of a scan: find files -> read + hash -> backend (decode, classify) -> record.

The Tagger composes one Reader, one Recorder and one backend (tagger.library.backend), chosen
by whoever opens it: here, or a Dask cluster.
"""
from __future__ import annotations

import logging
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tagger.config import Config
from tagger.engine.classify import Classifier
from tagger.fileio import Folders, is_empty_folder, iter_images, shown
from tagger.index import Index
from tagger.library.backend import BackendFactory, LocalBackend, ScanBackend
from tagger.library.reader import Reader
from tagger.library.recorder import Recorder
from tagger.library.summary import ScanSummary

log = logging.getLogger(__name__)


class Tagger:
    """One classifier and one index; `scan` tags everything under some folders."""

    def __init__(self, config: Config, classifier: Classifier, store: Index, backend: BackendFactory = LocalBackend) -> None:
        self.config = config
        self.classifier = classifier
        self.store = store
        self.recorder = Recorder(config, store, classifier.name)
        self.reader = Reader(config, store, self.recorder, classifier.name)
        self.backend: ScanBackend = backend(config, classifier, self.reader, self.recorder)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: new files get the new rules and thresholds at once."""
        self.config = config
        self.recorder.reconfigure(config)
        self.reader.reconfigure(config)
        self.backend.reconfigure(config)

    def close(self) -> None:
        self.backend.close()
        self.reader.close()

    def scan(
        self,
        roots: Sequence[Path],
        on_progress: Callable[[int], None] | None = None,
        defer_recent: Callable[[Path], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        summary: ScanSummary | None = None,
        prune: bool = False,
    ) -> ScanSummary:
        """Tag what is new or changed under `roots` and drop index rows of files that are gone.

        With `defer_recent` (the daemon), files written in the last `watch.stable_seconds`
        may still be growing: they are handed over instead of tagged half-written. `summary`
        is filled as the scan goes (so what was done is known when it stops on an error).
        `prune` also drops the rows of a folder that is empty now (see gone_under).
        """
        started = time.monotonic()
        summary = summary if summary is not None else ScanSummary()
        caught_up = self.recorder.retagger.catch_up()  # owed by an interrupted retag or changed sidecar settings
        if caught_up:
            log.info("brought the sidecars of %d files up to date (owed by an interrupted retag or a change of sidecar settings)", caught_up)
        roots = [r.resolve() for r in roots]
        self.reader.folders = Folders([*self.config.folders, *roots])
        unlisted: list[tuple[Path, str]] = []
        leftovers: list[Path] = []
        found = [p for root in roots for p in iter_images(root, unlisted, leftovers)]
        remove_leftovers(leftovers)
        for folder, reason in unlisted:
            log.warning("%s: cannot list this folder (%s); its files stay in the index as they were", shown(folder), reason)
        paths = found
        if defer_recent is not None:
            recent = _recently_written(found, self.config.watch.stable_seconds)
            for path in recent:
                defer_recent(path)
            paths = [p for p in found if p not in recent]
        summary.files = len(paths)
        self.backend.tag(paths, summary, on_progress, cancelled)
        if cancelled is not None and cancelled():
            summary.seconds = time.monotonic() - started
            return summary  # stopping: the rest is found by the next reconcile
        seen = {str(p) for p in found}
        for root in roots:
            if root.is_dir():
                summary.removed += self.forget(gone_under(self.store, root, seen, [f for f, _ in unlisted], prune))
        summary.seconds = time.monotonic() - started
        return summary

    def tag_files(self, paths: Sequence[Path], summary: ScanSummary) -> None:
        """One batch, start to finish (the daemon's unit of work)."""
        self.reader.folders = Folders(self.config.folders)
        self.backend.tag(paths, summary, None, None)

    def move(self, src: Path, dst: Path) -> bool:
        """A moved file keeps its tags (tagger.library.recorder); False when `src` was never indexed."""
        return self.recorder.move(src, dst)

    def move_tree(self, src: Path, dst: Path) -> int:
        return self.recorder.move_tree(src, dst)

    def forget(self, paths: Sequence[Path]) -> int:
        return self.recorder.forget(paths)

    def forget_tree(self, folder: Path) -> int:
        return self.recorder.forget_tree(folder)


LEFTOVER_AGE = 60.0  # seconds: a sidecar is written in milliseconds; a temporary file this old was abandoned


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


def gone_under(store: Index, root: Path, seen: set[str], unlisted: list[Path], prune: bool) -> list[Path]:
    """The indexed files under `root` that the scan did not find and that are really gone.

    Not those in a folder that could not be listed. Not, without `prune`, those of a root that
    is empty now: an unmounted share leaves its empty mount point, and dropping the whole
    library then cost a re-read of every file when it came back.
    """
    missing = [Path(p) for p in store.paths_under(str(root)) if p not in seen]
    missing = [p for p in missing if not any(p.is_relative_to(folder) for folder in unlisted)]
    if missing and not prune and is_empty_folder(root):
        log.warning(
            "%s: the folder is empty, but the index holds %d files in it: taken for an unmounted share, "
            "nothing is removed (if they were deleted: tagger scan --prune)", shown(root), len(missing)
        )
        return []
    return missing


def _recently_written(paths: Sequence[Path], seconds: float) -> set[Path]:
    cutoff = time.time() - seconds
    recent = set()
    for path in paths:
        try:
            if path.stat().st_mtime > cutoff:
                recent.add(path)
        except OSError:
            continue
    return recent
