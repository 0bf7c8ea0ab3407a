"""Wires the stages of a scan: walk folders -> read + hash -> backend (decode, classify) -> record.

The Tagger composes one Reader, one Recorder and one backend (tagger.library.backend), chosen
by whoever opens it: here, or a Dask cluster.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tagger.config import Config
from tagger.engine.classify import Classifier
from tagger.fileio import Folders
from tagger.index import Index
from tagger.library.backend import BackendFactory, LocalBackend, ScanBackend
from tagger.library.reader import Reader
from tagger.library.recorder import Recorder
from tagger.library.summary import ScanSummary
from tagger.library.walk import LibraryWalk

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
        `prune` also drops the rows of a folder that is empty now (see tagger.library.walk). The
        library is walked one folder at a time, so memory does not grow with it.
        """
        started = time.monotonic()
        summary = summary if summary is not None else ScanSummary()
        caught_up = self.recorder.retagger.catch_up()  # owed by an interrupted retag or changed sidecar settings
        if caught_up:
            log.info("brought the sidecars of %d files up to date (owed by an interrupted retag or a change of sidecar settings)", caught_up)
        roots = [r.resolve() for r in roots]
        self.reader.folders = Folders([*self.config.folders, *roots])
        recent = None if defer_recent is None else (defer_recent, self.config.watch.stable_seconds)
        walk = LibraryWalk(self.store, self.recorder, self.classifier.name, summary, on_progress, cancelled, recent)
        self._tag(walk.paths(roots, prune), summary, on_progress, cancelled)
        summary.seconds = time.monotonic() - started
        return summary

    def tag_files(self, paths: Sequence[Path], summary: ScanSummary) -> None:
        """One batch, start to finish (the daemon's unit of work)."""
        self.reader.folders = Folders(self.config.folders)
        self._tag(paths, summary, None, None)

    def _tag(
        self,
        paths: Iterable[Path],
        summary: ScanSummary,
        on_progress: Callable[[int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        """The backend's work, then the copies of known contents still waiting in the recorder. Stopped
        by an error, what was not recorded is left to the next scan, none of it half-written."""
        try:
            self.backend.tag(paths, summary, on_progress, cancelled)
        except BaseException:
            self.recorder.abandon()
            raise
        self.recorder.flush(summary)

    def move(self, src: Path, dst: Path) -> bool:
        """A moved file keeps its tags (tagger.library.recorder); False when `src` was never indexed."""
        return self.recorder.move(src, dst)

    def move_tree(self, src: Path, dst: Path) -> int:
        return self.recorder.move_tree(src, dst)

    def forget(self, paths: Sequence[Path]) -> int:
        return self.recorder.forget(paths)

    def forget_tree(self, folder: Path) -> int:
        return self.recorder.forget_tree(folder)
