"""The scan backend of a Dask cluster: batches out through the cluster's window, tags written back here.

The scan's Recorder stays the one writer: this only decides what goes out and hands what comes
back (or what the cluster could not take, classified here by a LocalBackend) to it.
Imported only when a scheduler is configured (tagger.cluster.choice).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tagger.cluster.coordinator import Cluster
from tagger.cluster.protocol import JobResult, JobSettings, ModelIdentity
from tagger.config import Config
from tagger.engine.classify import Classifier
from tagger.index.records import ImageFacts
from tagger.library.backend import Cancelled, LocalBackend, Progress, batches, refine_budget
from tagger.library.reader import Read, Reader
from tagger.library.recorder import Recorder
from tagger.library.summary import ScanSummary


def job_settings(config: Config, classifier: Classifier) -> JobSettings:
    m, d = config.model, config.decode
    return JobSettings(ModelIdentity.of(classifier), m.top_k, d.max_pixels, d.draft, d.near_tie)


class ClusterBackend:
    """Sends a scan's batches to a Dask cluster and records the results as they come back."""

    def __init__(self, config: Config, classifier: Classifier, reader: Reader, recorder: Recorder) -> None:
        self.config = config
        self.classifier = classifier
        self.reader = reader
        self.recorder = recorder
        self.here = LocalBackend(config, classifier, reader, recorder)  # what the cluster cannot take
        self.cluster: Cluster[Sequence[Read]] = Cluster(config.cluster, job_settings(config, classifier))

    def reconfigure(self, config: Config) -> None:
        """Batches sent from now on carry the new top_k and decode settings."""
        self.config = config
        self.here.reconfigure(config)
        self.cluster.settings = job_settings(config, self.classifier)

    def close(self) -> None:
        self.cluster.close()
        self.here.close()

    def tag(self, paths: Iterable[Path], summary: ScanSummary, on_progress: Progress, cancelled: Cancelled) -> None:
        """At most `cluster.in_flight` batches out at once, each written here as it comes back;
        what the cluster cannot take is classified here."""
        cluster = self.cluster
        for batch in batches(paths, self.config.cluster.batch_size):
            if cancelled is not None and cancelled():
                break
            reads = self.reader.read_new(batch, summary)
            if on_progress and len(batch) > len(reads):
                on_progress(len(batch) - len(reads))
            clips = [r for r in reads if r.video]  # decoded by seeking in their file: a worker has no path to it
            if clips:
                reads = [r for r in reads if not r.video]
                self.here.classify(clips, summary)
                if on_progress:
                    on_progress(len(clips))
            if reads and not cluster.submit(reads, [r.data for r in reads], refine_budget(summary, len(reads))):
                self.here.classify(reads, summary)
                if on_progress:
                    on_progress(len(reads))
            self._write_back(summary, on_progress, block=cluster.full)
        while cluster.busy:  # even when stopping: already read, so record it
            self._write_back(summary, on_progress, block=True)
        self.here.drain(summary)

    def _write_back(self, summary: ScanSummary, on_progress: Progress, block: bool) -> None:
        for reads, result in self.cluster.done(block):
            if result is None:
                self.here.classify(reads, summary)
            else:
                self._record(reads, result, summary)
            if on_progress:
                on_progress(len(reads))

    def _record(self, reads: Sequence[Read], result: JobResult, summary: ScanSummary) -> None:
        weights_sha256 = self.classifier.weights.sha256  # the worker checked that its weights are these
        for read, item in zip(reads, result.items):
            if isinstance(item, str):
                self.recorder.fail(read.path, read.sha256, read.size, read.mtime_ns, item, summary, read.stamp)
                continue
            facts = ImageFacts(read.sha256, read.size, item.width, item.height)
            look = (item.embedding, item.image_hash)
            if not self.recorder.record(read.path, facts, read.mtime_ns, item.tags, weights_sha256, look, read.stamp):
                summary.sidecar_errors += 1
            summary.classified += 1
            summary.by_worker[result.worker] = summary.by_worker.get(result.worker, 0) + 1
        summary.refined += result.refined
