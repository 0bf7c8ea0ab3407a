"""Where a scan's model work runs, behind one protocol: here (LocalBackend) or on a Dask cluster
(tagger.cluster.backend.ClusterBackend), picked once by whoever opens the scan.

A backend gets the files a scan found, reads them through the scan's Reader, classifies what
is new and hands every result to the scan's Recorder, the library's one writer.

Here, decoding and classifying are separate stages on purpose: decoding runs in a small thread
pool (Pillow releases the GIL) while the model sees whole batches.
"""
from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from tagger.config import Config
from tagger.cpu import yield_to_model
from tagger.engine.classify import Classifier
from tagger.engine.decode import DecodedArray, decode_or_error, draft_size, near_ties
from tagger.engine.fastjpeg import Scratch
from tagger.engine.features import image_hash, unit
from tagger.engine.video import Clip, ClipBudget, clip_or_error, clip_tags
from tagger.engine.labels import Tag
from tagger.errors import DecodeError
from tagger.index.records import ImageFacts
from tagger.library.reader import Read, Reader
from tagger.library.recorder import Recorder
from tagger.library.summary import ScanSummary
from tagger.memory import return_big_buffers

# File bytes held by the batches decoded ahead of the model, beyond the one being finished:
# a dozen camera JPEGs, not a dozen 200 MB files.
AHEAD_BYTES = 64 * 1024 * 1024
REFINE_SHARE = 0.1  # of the photos classified, at most this share is decoded again in full
REFINE_GRACE = 10  # and this many more: near ties early in a scan are not dropped for coming early
REFINE_QUEUE = 4  # near ties whose full decode may still be running while the scan goes on

Progress = Callable[[int], None] | None
Cancelled = Callable[[], bool] | None
T = TypeVar("T")


class ScanBackend(Protocol):
    """Tags the files a scan hands it, recording each through the scan's Recorder."""

    def tag(self, paths: Iterable[Path], summary: ScanSummary, on_progress: Progress, cancelled: Cancelled) -> None:
        """Everything in `paths` classified (or reused, or failed) and recorded before it returns (copies
        of known contents may wait in the recorder for Recorder.flush). `paths` may be a scan's walk,
        produced as it is consumed."""

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: batches from now on use its settings."""

    def close(self) -> None:
        """Threads stopped, connections closed."""


# How a scan opens its backend: LocalBackend itself, or tagger.cluster.backend.ClusterBackend.
BackendFactory = Callable[[Config, Classifier, Reader, Recorder], ScanBackend]


def batches(items: Iterable[T], size: int) -> Iterator[Sequence[T]]:
    """`size` items at a time, taken from `items` as they come (a scan's walk is never a whole list)."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def refine_budget(summary: ScanSummary, batch: int) -> int:
    """A model unsure of everything (random weights, or pictures unlike any class) would make
    every photo a near tie: at most a tenth of the photos, and ten more, are decoded twice.

    The ten: a budget earned photo by photo dropped the near ties of a scan's first folder of
    textures (bench/bench_refine.py: 8 of 11 refined, a flip kept, in 100 photos of which 11 were
    near ties). On a cluster each batch gets the budget left when it is sent, so batches out at
    the same time may together use up to `cluster.in_flight` times that: still bounded."""
    return REFINE_GRACE + int(REFINE_SHARE * (summary.classified + batch)) - summary.refined


@dataclass
class _InFlight:
    """A file read and hashed, its decoding running in a worker thread."""

    read: Read
    decoded: Future[DecodedArray | Clip | DecodeError]


@dataclass(frozen=True)
class _Pending:
    """A file decoded, waiting for a model run: a photo's one input, or a clip's frames."""

    read: Read
    facts: ImageFacts
    array: np.ndarray  # the model's input; a clip's first frame
    reduced: bool
    clip: Clip | None = None

    @property
    def inputs(self) -> np.ndarray:
        return self.array[None] if self.clip is None else self.clip.arrays


@dataclass(frozen=True)
class _Refining:
    """A near tie being decoded in full; its draft answer stands if that decode fails."""

    pending: _Pending
    tags: list[Tag]
    features: np.ndarray
    future: Future[DecodedArray | DecodeError]


class LocalBackend:
    """Decode in threads, classify batches on this machine's model, refine near ties beside them."""

    def __init__(self, config: Config, classifier: Classifier, reader: Reader, recorder: Recorder) -> None:
        self.config = config
        self.classifier = classifier
        self.reader = reader
        self.recorder = recorder
        return_big_buffers()  # decoded photos are big and short-lived: see tagger/memory.py
        decoders = max(1, min(4, os.cpu_count() or 1))
        self._decoders = ThreadPoolExecutor(decoders, "tagger-decode", yield_to_model)
        # Full decodes of near ties, one at a time (48 MB each at 12 MP); at the model's level,
        # since the scan waits for this one thread (docs/performance.md: +3-9% in two A/B runs).
        self._refiner = ThreadPoolExecutor(1, "tagger-refine")
        self._refine_buffer = Scratch()  # reused by those full decodes, given back after each scan or batch
        self._refining: deque[_Refining] = deque()
        # Batches decoded ahead of the model: two images per decoder thread, at least one batch.
        self._depth = max(1, -(-2 * decoders // config.model.batch_size))

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def close(self) -> None:
        self._decoders.shutdown(wait=True)
        self._refiner.shutdown(wait=True)

    def tag(self, paths: Iterable[Path], summary: ScanSummary, on_progress: Progress, cancelled: Cancelled) -> None:
        # Several batches in flight: while the model runs on one, the next ones are being decoded,
        # enough of them to keep every decoder thread busy, within a bound on the bytes they hold.
        ahead: deque[tuple[list[_InFlight], int]] = deque()
        for batch in batches(paths, self.config.model.batch_size):
            if cancelled is not None and cancelled():
                break
            ahead.append((self._decode_all(self.reader.read_new(batch, summary)), len(batch)))
            while len(ahead) > self._depth or (len(ahead) > 1 and _bytes_held(ahead) > AHEAD_BYTES):
                self._finish_next(ahead, summary, on_progress)
        while ahead:  # even when stopping: already read, so record it
            self._finish_next(ahead, summary, on_progress)
        self.drain(summary)

    def classify(self, reads: Sequence[Read], summary: ScanSummary) -> None:
        """Files already read (that a cluster could not take): decoded, classified and recorded here.
        Their near ties may still be refining: `drain` waits for them."""
        self._finish(self._decode_all(reads), summary)

    def drain(self, summary: ScanSummary) -> None:
        """Every near tie still decoding in full: classified again and recorded."""
        while self._refining:
            self._collect_refined(summary, wait=True)
        self._refine_buffer.release()

    def _finish_next(
        self, ahead: deque[tuple[list[_InFlight], int]], summary: ScanSummary, on_progress: Progress
    ) -> None:
        inflight, count = ahead.popleft()
        self._finish(inflight, summary)
        if on_progress:
            on_progress(count)

    def _decode_all(self, reads: Sequence[Read]) -> list[_InFlight]:
        """Decoding of files read and hashed, left running in the decoder threads."""
        spec, max_pixels = self.classifier.spec.preprocess, self.config.decode.max_pixels
        draft = draft_size(spec, self.config.decode.draft)
        video = self.config.video
        budget = ClipBudget(video.frames, video.max_seconds, max_pixels)
        return [
            _InFlight(r, self._decoders.submit(clip_or_error, r.path, self.reader.folders, budget, spec))
            if r.video else _InFlight(r, self._decoders.submit(decode_or_error, r.data, max_pixels, spec, draft))
            for r in reads
        ]

    def _finish(self, inflight: list[_InFlight], summary: ScanSummary) -> None:
        """Collect the decoded arrays, one model run, then sidecars and index rows."""
        pending: list[_Pending] = []
        for item in inflight:
            result, read = item.decoded.result(), item.read
            if isinstance(result, DecodeError):
                self.recorder.fail(read.path, read.sha256, read.size, read.mtime_ns, str(result), summary, read.stamp)
                continue
            if isinstance(result, Clip):
                facts = ImageFacts(read.sha256, read.size, result.width, result.height, result.duration)
                pending.append(_Pending(read, facts, result.arrays[0], False, result))
            else:
                facts = ImageFacts(read.sha256, read.size, result.width, result.height)
                pending.append(_Pending(read, facts, result.array, result.reduced))
        inflight.clear()
        if not pending:
            return
        top_k, near_tie = self.config.model.top_k, self.config.decode.near_tie
        tags_of, leads, features_of = _per_file(pending, *self.classifier.predict(
            np.concatenate([p.inputs for p in pending]), top_k, near_tie), top_k)
        budget = refine_budget(summary, len(pending))
        near = set(near_ties([p.reduced for p in pending], leads, near_tie, budget))
        spec, max_pixels = self.classifier.spec.preprocess, self.config.decode.max_pixels
        for i, (done, tags, features) in enumerate(zip(pending, tags_of, features_of)):
            if i in near:  # decoded in full beside the next batches, recorded when done
                future = self._refiner.submit(decode_or_error, done.read.data, max_pixels, spec, None, self._refine_buffer)
                self._refining.append(_Refining(done, tags, features, future))
                summary.refined += 1  # counted now, as classified: the next batches' budget sees both
                summary.classified += 1
            else:
                self._store(done, tags, features, summary)
        self._collect_refined(summary, wait=len(self._refining) > REFINE_QUEUE)

    def _store(
        self, done: _Pending, tags: list[Tag], features: np.ndarray, summary: ScanSummary, counted: bool = False
    ) -> None:
        read, look = done.read, (features, image_hash(done.array))
        weights = self.classifier.weights.sha256
        if not self.recorder.record(read.path, done.facts, read.mtime_ns, tags, weights, look, read.stamp):
            summary.sidecar_errors += 1
        if not counted:
            summary.classified += 1

    def _collect_refined(self, summary: ScanSummary, wait: bool) -> None:
        """Near ties whose full decode is done: the model's second answer, then their records.

        A reduced decode moves each pixel a little; where the best logit led the second by less
        than `decode.refine_lead`, that can swap them. Only those few images pay for a full decode,
        and it runs beside the next batches instead of holding the model up (a fifth of the
        speed at 7% of the photos refined, when the model waited for it). `wait` takes the
        oldest one whatever its state, and all of them at the end of a scan or batch.
        """
        ready: list[_Refining] = []
        while self._refining and (self._refining[0].future.done() or wait):
            ready.append(self._refining.popleft())
            wait = wait and len(self._refining) > REFINE_QUEUE
        if not ready:
            return
        redone = [(item, item.future.result()) for item in ready]
        full = [(item, r) for item, r in redone if isinstance(r, DecodedArray)]
        better: dict[int, tuple[list[Tag], np.ndarray]] = {}
        if full:
            again, _, features = self.classifier.predict(np.stack([r.array for _, r in full]), self.config.model.top_k)
            better = {id(item): (tags, f) for (item, _), tags, f in zip(full, again, features)}
        for item in ready:  # a full decode that failed keeps the draft decode's answer
            tags, f = better.get(id(item), (item.tags, item.features))
            self._store(item.pending, tags, f, summary, counted=True)


def _per_file(
    pending: Sequence[_Pending], tags: list[list[Tag]], leads: list[float], features: np.ndarray, top_k: int
) -> tuple[list[list[Tag]], list[float], np.ndarray]:
    """The model's answers per input -> per file: a clip's frames made one answer
    (tagger.engine.video.clip_tags; its embedding the mean of its frames', normalised again)."""
    if all(p.clip is None for p in pending):
        return tags, leads, features
    out_tags: list[list[Tag]] = []
    out_leads: list[float] = []
    out_features: list[np.ndarray] = []
    start = 0
    for item in pending:
        count = len(item.inputs)
        if item.clip is None:
            out_tags.append(tags[start])
            out_leads.append(leads[start])
            out_features.append(features[start])
        else:
            out_tags.append(clip_tags(tags[start : start + count], item.clip.times, top_k))
            out_leads.append(math.inf)  # never refined: a clip's frames are decoded in full
            out_features.append(unit(features[start : start + count].mean(axis=0, keepdims=True))[0])
        start += count
    return out_tags, out_leads, np.stack(out_features)


def _bytes_held(ahead: deque[tuple[list[_InFlight], int]]) -> int:
    return sum(len(item.read.data) for batch, _ in ahead for item in batch)
