"""The pipeline's cluster path: batches out through the cluster's window, tags written back here.

The Tagger stays the one writer: this only decides what goes out and hands what comes back
(or what the cluster could not take) to the Tagger's own recording and local classifying.
Imported only when a scheduler is configured.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tagger.cluster.coordinator import Cluster
from tagger.library.jsonsidecar import ImageFacts
from tagger.cluster.worker import JobResult

if TYPE_CHECKING:
    from tagger.library.scan import ScanSummary, Tagger, _Read


class OnCluster:
    """Sends a Tagger's batches to a Dask cluster and writes the results back as they come."""

    def __init__(self, tagger: Tagger, cluster: Cluster[list[_Read]]) -> None:
        self.tagger = tagger
        self.cluster = cluster

    def tag(
        self,
        paths: Sequence[Path],
        summary: ScanSummary,
        on_progress: Callable[[int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        """At most `cluster.in_flight` batches out at once, each written here as it comes back;
        what the cluster cannot take is classified here."""
        from tagger.library.scan import _chunks, _decode_all, refine_budget

        tagger, cluster = self.tagger, self.cluster
        for batch in _chunks(paths, tagger.config.cluster.batch_size):
            if cancelled is not None and cancelled():
                break
            reads = tagger._read_new(batch, summary)
            if on_progress and len(batch) > len(reads):
                on_progress(len(batch) - len(reads))
            if reads and not cluster.submit(reads, [r.data for r in reads], refine_budget(summary, len(reads))):
                tagger._finish(_decode_all(tagger, reads), summary)
                if on_progress:
                    on_progress(len(reads))
            self._write_back(summary, on_progress, block=cluster.full)
        while cluster.busy:  # even when stopping: already read, so record it
            self._write_back(summary, on_progress, block=True)

    def _write_back(self, summary: ScanSummary, on_progress: Callable[[int], None] | None, block: bool) -> None:
        from tagger.library.scan import _decode_all

        for reads, result in self.cluster.done(block):
            if result is None:
                self.tagger._finish(_decode_all(self.tagger, reads), summary)
            else:
                self._record(reads, result, summary)
            if on_progress:
                on_progress(len(reads))

    def _record(self, reads: Sequence[_Read], result: JobResult, summary: ScanSummary) -> None:
        tagger = self.tagger
        weights_sha256 = tagger.classifier.weights.sha256  # the worker checked that its weights are these
        for read, item in zip(reads, result.items):
            if isinstance(item, str):
                tagger._fail(read.path, read.sha256, len(read.data), read.mtime_ns, item, summary)
                continue
            facts = ImageFacts(read.sha256, len(read.data), item.width, item.height)
            look = (item.embedding, item.image_hash)
            if not tagger._record(read.path, facts, read.mtime_ns, item.tags, weights_sha256, look):
                summary.sidecar_errors += 1
            summary.classified += 1
            summary.by_worker[result.worker] = summary.by_worker.get(result.worker, 0) + 1
        summary.refined += result.refined
