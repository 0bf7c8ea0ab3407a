"""Wires the stages: find files -> read + hash -> decode -> classify -> sidecar + index.

Decoding and classifying are separate stages on purpose: decoding runs in a small thread
pool (Pillow releases the GIL) while the model sees whole batches.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tagger.engine.classify import Classifier
from tagger.engine.labels import Tag
from tagger.memory import return_big_buffers
from tagger.config import Config
from tagger.cpu import yield_to_model
from tagger.vectors.duplicates import image_hash
from tagger.vectors.embeddings import Look, save_embedding
from tagger.engine.decode import DecodedArray, decode_array, draft_size
from tagger.engine.fastjpeg import Scratch
from tagger.errors import ConfigError, DecodeError, DiskError
from tagger.fileio import Folders, is_empty_folder, is_gone, iter_images, read_limited, shown
from tagger.tags.keywords import keyword_rows
from tagger.vectors.learned import LearnedModels
from tagger.library.keywording import Retagger
from tagger.tags.rules import Rules
from tagger.library.jsonsidecar import ImageFacts, read_sidecar, remove_own_sidecar, sidecar_path, write_sidecar
from tagger.index import Index
from tagger.engine.weights import Preprocess
from tagger.library.xmp import xmp_path

if TYPE_CHECKING:
    from tagger.cluster.coordinator import JobSettings
    from tagger.cluster.backend import OnCluster

log = logging.getLogger(__name__)

# File bytes held by the batches decoded ahead of the model, beyond the one being finished:
# a dozen camera JPEGs, not a dozen 200 MB files.
AHEAD_BYTES = 64 * 1024 * 1024
REFINE_SHARE = 0.1  # of the photos classified, at most this share is decoded again in full
REFINE_QUEUE = 4  # near ties whose full decode may still be running while the scan goes on

@dataclass
class ScanSummary:
    files: int = 0
    classified: int = 0  # model runs
    reused: int = 0  # same content already in the index: a hash, no model run
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    sidecar_errors: int = 0
    refined: int = 0  # near ties decoded fully and classified again
    checked: int = 0  # INT8's close calls run again in fp32 (tagger.engine.classify.CheckedNetwork; set by the CLI)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    by_worker: dict[str, int] = field(default_factory=dict)  # images classified on each cluster worker

    @property
    def tagged(self) -> int:
        return self.classified + self.reused

    @property
    def classified_here(self) -> int:
        return self.classified - sum(self.by_worker.values())

    def where(self, scheduler: str) -> str:
        """The summary's line saying where the work went: per cluster worker, and here."""
        workers = ", ".join(f"{name} {count}" for name, count in sorted(self.by_worker.items()))
        listed = f" ({workers})" if workers else ""
        return f"where: {sum(self.by_worker.values())} classified on the cluster {scheduler}{listed}, {self.classified_here} here"


@dataclass
class _InFlight:
    """A file read and hashed, its decoding running in a worker thread."""

    path: Path
    mtime_ns: int
    data: bytes  # kept until the model has run: a near tie is decoded again, fully
    sha256: str
    decoded: Future[DecodedArray | DecodeError]


@dataclass(frozen=True)
class _Read:
    """A file read and hashed whose content is not in the index yet."""

    path: Path
    mtime_ns: int
    data: bytes
    sha256: str


@dataclass(frozen=True)
class _Refining:
    """A near tie being decoded in full; its draft answer stands if that decode fails."""

    pending: _Pending
    tags: list[Tag]
    features: np.ndarray
    future: Future[DecodedArray | DecodeError]


@dataclass(frozen=True)
class _Pending:
    """A file read and hashed, waiting for a model run."""

    path: Path
    facts: ImageFacts
    mtime_ns: int
    array: np.ndarray
    data: bytes
    reduced: bool


class Tagger:
    """One classifier and one index; `scan` tags everything under some folders."""

    def __init__(self, config: Config, classifier: Classifier, store: Index, rules: Rules | None = None) -> None:
        self.config = config
        self.classifier = classifier
        self.store = store
        self.retagger = Retagger(config, store, rules)
        self.retagger.check_settings()
        self.learned = LearnedModels(store, classifier.name)  # applied to each new image's embedding
        self.folders = Folders(config.folders)  # what a symlink may lead to (tagger.fileio)
        # Helper threads run below the model's (tagger.cpu.yield_to_model): it gets a core at once.
        self._readers = ThreadPoolExecutor(1, "tagger-read", yield_to_model)
        return_big_buffers()  # decoded photos are big and short-lived: see tagger/memory.py
        decoders = max(1, min(4, os.cpu_count() or 1))
        self._decoders = ThreadPoolExecutor(decoders, "tagger-decode", yield_to_model)
        # Full decodes of near ties, one at a time (48 MB each at 12 MP); at the model's level,
        # since the scan waits for this one thread (README: +3-9% in two A/B runs).
        self._refiner = ThreadPoolExecutor(1, "tagger-refine")
        self._refine_buffer = Scratch()  # reused by those full decodes, given back after each scan or batch
        self._refining: deque[_Refining] = deque()
        # Batches decoded ahead of the model: two images per decoder thread, at least one batch.
        self._depth = max(1, -(-2 * decoders // config.model.batch_size))
        self.on_cluster = _open_cluster(self, config, classifier)  # None: everything is classified here

    def reconfigure(self, config: Config, rules: Rules) -> None:
        """A reloaded config: new files get the new rules and thresholds at once."""
        self.config = config
        self.retagger = Retagger(config, self.store, rules)
        self.retagger.check_settings()
        self.folders = Folders(config.folders)
        if self.on_cluster is not None:  # batches sent from now on carry the new top_k and decode settings
            self.on_cluster.cluster.settings = job_settings(config, self.classifier)

    def close(self) -> None:
        if self.on_cluster is not None:
            self.on_cluster.cluster.close()
        self._readers.shutdown(wait=True)
        self._decoders.shutdown(wait=True)
        self._refiner.shutdown(wait=True)

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
        caught_up = self.retagger.catch_up()  # sidecars an interrupted retag still owed
        if caught_up:
            log.info("rewrote the sidecars of %d files that an interrupted retag left", caught_up)
        roots = [r.resolve() for r in roots]
        self.folders = Folders([*self.config.folders, *roots])
        unlisted: list[tuple[Path, str]] = []
        found = [p for root in roots for p in iter_images(root, unlisted)]
        for folder, reason in unlisted:
            log.warning("%s: cannot list this folder (%s); its files stay in the index as they were", shown(folder), reason)
        paths = found
        if defer_recent is not None:
            recent = _recently_written(found, self.config.watch.stable_seconds)
            for path in recent:
                defer_recent(path)
            paths = [p for p in found if p not in recent]
        summary.files = len(paths)
        if self.on_cluster is not None:
            self.on_cluster.tag(paths, summary, on_progress, cancelled)
        else:
            # Several batches in flight: while the model runs on one, the next ones are being decoded,
            # enough of them to keep every decoder thread busy, within a bound on the bytes they hold.
            ahead: deque[tuple[list[_InFlight], int]] = deque()
            for batch in _chunks(paths, self.config.model.batch_size):
                if cancelled is not None and cancelled():
                    break
                ahead.append((_decode_all(self, self._read_new(batch, summary)), len(batch)))
                while len(ahead) > self._depth or (len(ahead) > 1 and _bytes_held(ahead) > AHEAD_BYTES):
                    _finish_next(self, ahead, summary, on_progress)
            while ahead:  # even when stopping: already read, so record it
                _finish_next(self, ahead, summary, on_progress)
            _drain_refined(self, summary)
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
        self.folders = Folders(self.config.folders)
        if self.on_cluster is not None:
            self.on_cluster.tag(paths, summary, None, None)
        else:
            self._finish(_decode_all(self, self._read_new(paths, summary)), summary)
            _drain_refined(self, summary)

    def _read_new(self, paths: Sequence[Path], summary: ScanSummary) -> list[_Read]:
        """Cheap checks, read + hash, reuse from the index: what is left needs a model run.

        Worker threads only read and hash; the index is touched from this thread alone.
        """
        changed = [(p, s) for p in paths if (s := self._changed_stat(p, summary)) is not None]
        fresh: list[_Read] = []
        limit, folders = self.config.decode.max_file_bytes, self.folders
        reads = self._readers.map(lambda p: _read_and_hash(p, limit, folders), [p for p, _ in changed])
        for (path, stat), read in zip(changed, reads):
            if isinstance(read, DecodeError):
                self._fail(path, None, stat.st_size, stat.st_mtime_ns, str(read), summary)
                continue
            data, sha256 = read
            cached = self.store.cached_image(sha256, self.classifier.name)
            if cached is None:
                fresh.append(_Read(path, stat.st_mtime_ns, data, sha256))
                continue
            if not self._record(path, cached.facts, stat.st_mtime_ns, cached.tags, cached.weights_sha256, None):
                summary.sidecar_errors += 1
            summary.reused += 1
        return fresh

    def _finish(self, inflight: list[_InFlight], summary: ScanSummary) -> None:
        """Collect the decoded arrays, one model run, then sidecars and index rows."""
        pending: list[_Pending] = []
        for item in inflight:
            result = item.decoded.result()
            if isinstance(result, DecodeError):
                self._fail(item.path, item.sha256, len(item.data), item.mtime_ns, str(result), summary)
                continue
            facts = ImageFacts(item.sha256, len(item.data), result.width, result.height)
            pending.append(_Pending(item.path, facts, item.mtime_ns, result.array, item.data, result.reduced))
        inflight.clear()
        if not pending:
            return
        top_k = self.config.model.top_k
        tags_of, margins, features_of = self.classifier.predict(np.stack([p.array for p in pending]), top_k)
        budget = refine_budget(summary, len(pending))
        near = set(near_ties([p.reduced for p in pending], margins, self.config.decode.refine_margin, budget))
        spec, max_pixels = self.classifier.spec.preprocess, self.config.decode.max_pixels
        for i, (done, tags, features) in enumerate(zip(pending, tags_of, features_of)):
            if i in near:  # decoded in full beside the next batches, recorded when done
                future = self._refiner.submit(_decode, done.data, max_pixels, spec, None, self._refine_buffer)
                self._refining.append(_Refining(done, tags, features, future))
                summary.refined += 1  # counted now, as classified: the next batches' budget sees both
                summary.classified += 1
            else:
                self._store(done, tags, features, summary)
        _collect_refined(self, summary, wait=len(self._refining) > REFINE_QUEUE)

    def _store(
        self, done: _Pending, tags: list[Tag], features: np.ndarray, summary: ScanSummary, counted: bool = False
    ) -> None:
        look = (features, image_hash(done.array))
        if not self._record(done.path, done.facts, done.mtime_ns, tags, self.classifier.weights.sha256, look):
            summary.sidecar_errors += 1
        if not counted:
            summary.classified += 1

    def _changed_stat(self, path: Path, summary: ScanSummary) -> os.stat_result | None:
        """The file's stat if it needs work; None if it is unchanged since it was last seen, or unreadable."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            if path.is_symlink():
                self._fail(path, None, 0, 0, "a broken symlink (its target is not there)", summary)
            else:  # deleted since it was listed or announced: nothing to tag
                self.forget([path])
            return None
        except OSError as exc:
            self._fail(path, None, 0, 0, f"cannot read file: {exc.strerror or exc}", summary)
            return None
        record = self.store.file_record(str(path))
        if record and record.size == stat.st_size and record.mtime_ns == stat.st_mtime_ns:
            if record.status == "failed" or (record.model == self.classifier.name and self._sidecar_current(path)):
                summary.unchanged += 1
                return None
        return stat

    def move(self, src: Path, dst: Path) -> bool:
        """A renamed or moved file keeps its tags: index row and sidecar follow, no model run.

        False when `src` was never indexed (the caller tags `dst` as new instead).
        """
        if self.store.file_record(str(src)) is None:
            return False
        sidecar = self._move_sidecar(src, dst)  # first: a crash now leaves no orphan sidecar behind
        self._move_xmp(src, dst)
        with self.store.transaction():
            self.store.move_file(str(src), str(dst))
            self.store.set_sidecar(str(dst), sidecar)
        return True

    def move_tree(self, src: Path, dst: Path) -> int:
        """A renamed folder: its sidecars moved with it; only index rows change."""
        with self.store.transaction():
            return self.store.move_tree(str(src), str(dst))

    def forget(self, paths: Sequence[Path]) -> int:
        """Deleted files (a scan's, or the daemon's after the grace period): index rows and our
        orphan JSON sidecars go; how many were gone.

        An XMP sidecar stays: other tools and the user write to it too.
        """
        gone = [p for p in paths if is_gone(p)]
        if not gone:
            return 0
        with self.store.transaction("the removal of deleted files"):
            self.store.delete_files([str(p) for p in gone])
        for path in gone:
            remove_own_sidecar(path)
        return len(gone)

    def forget_tree(self, folder: Path) -> int:
        if not is_gone(folder):
            return 0
        with self.store.transaction():
            return self.store.delete_tree(str(folder))

    def _move_sidecar(self, src: Path, dst: Path) -> str | None:
        """Rewrite the sidecar under the new name; None when there is none to move."""
        old = sidecar_path(src)
        if not self.config.sidecar.enabled or not old.exists():
            return None
        try:
            document = read_sidecar(src)
            document["image"]["file"] = dst.name
            new = str(write_sidecar(dst, document))
            old.unlink()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: sidecar not moved to %s: %s (it is rewritten at the next scan)", old, dst, exc)
            return None
        return new

    def _move_xmp(self, src: Path, dst: Path) -> None:
        """The XMP sidecar follows its image; one already at the new name is merged into instead."""
        if not self.config.xmp.enabled:
            return
        old, new = xmp_path(src, self.config.xmp.style), xmp_path(dst, self.config.xmp.style)
        if not old.exists() or old == new:
            return
        if new.exists():
            record = self.store.file_record(str(src))
            if record is not None and record.sha256 is not None:
                self.retagger.sidecars.write_xmp(dst, self.store.keywords(record.sha256))
            return
        try:
            os.replace(old, new)
        except OSError as exc:
            log.warning("%s: XMP sidecar not moved to %s: %s", old, new, exc.strerror or exc)

    def _sidecar_current(self, path: Path) -> bool:
        xmp = self.config.xmp
        return (not self.config.sidecar.enabled or sidecar_path(path).exists()) and (
            not xmp.enabled or xmp_path(path, xmp.style).exists()
        )

    def _record(
        self, path: Path, facts: ImageFacts, mtime_ns: int, tags: Sequence[Tag], weights_sha256: str, look: Look | None
    ) -> bool:
        """Sidecars first, then the index: a crash in between is repaired by the next scan.

        Keywords: rules on the raw tags, learned tags (of `look`'s features, else those stored), then
        the user's corrections. False when a sidecar could not be written (the reason is kept in the index).
        """
        rules, min_score = self.retagger.rules, self.config.model.min_score
        learned = self.learned.stored(facts.sha256) if look is None else self.learned.scores(look[0])
        keywords = keyword_rows(rules, tags, min_score, self.store.corrections(facts.sha256), learned)
        sidecar, note = self.retagger.sidecars.write(
            path, facts, self.classifier.name, weights_sha256, tags, keywords
        )
        try:
            with self.store.transaction(f"the tags of {path}"):
                if look is not None:  # a model run: its tags, embedding and learned tags
                    self.store.save_image(facts, self.classifier.name, weights_sha256, tags)
                    save_embedding(self.store, facts.sha256, self.classifier.name, *look, learned)
                self.store.save_keywords(facts.sha256, keywords)
                self.store.save_file(str(path), facts.sha256, facts.size, mtime_ns, sidecar, note)
        except DiskError:
            if sidecar is not None:  # no sidecar without its index row: the next scan writes both
                Path(sidecar).unlink(missing_ok=True)
            raise
        return note is None

    def _fail(self, path: Path, sha256: str | None, size: int, mtime_ns: int, reason: str, summary: ScanSummary) -> None:
        log.warning("%s: %s", path, reason)
        with self.store.transaction(f"the failure of {path}"):
            self.store.save_failure(str(path), sha256, size, mtime_ns, reason)
        summary.failed += 1
        summary.failures.append((str(path), reason))


def _finish_next(
    tagger: Tagger, ahead: deque[tuple[list[_InFlight], int]], summary: ScanSummary,
    on_progress: Callable[[int], None] | None,
) -> None:
    inflight, count = ahead.popleft()
    tagger._finish(inflight, summary)
    if on_progress:
        on_progress(count)


def _collect_refined(tagger: Tagger, summary: ScanSummary, wait: bool) -> None:
    """Near ties whose full decode is done: the model's second answer, then their records.

    A reduced decode moves each pixel a little; where the best two guesses were within
    `decode.refine_margin`, that can swap them. Only those few images pay for a full decode,
    and it runs beside the next batches instead of holding the model up (a fifth of the
    speed at 7% of the photos refined, when the model waited for it). `wait` takes the
    oldest one whatever its state, and all of them at the end of a scan or batch.
    """
    ready: list[_Refining] = []
    while tagger._refining and (tagger._refining[0].future.done() or wait):
        ready.append(tagger._refining.popleft())
        wait = wait and len(tagger._refining) > REFINE_QUEUE
    if not ready:
        return
    redone = [(item, item.future.result()) for item in ready]
    full = [(item, r) for item, r in redone if isinstance(r, DecodedArray)]
    better: dict[int, tuple[list[Tag], np.ndarray]] = {}
    if full:
        again, _, features = tagger.classifier.predict(np.stack([r.array for _, r in full]), tagger.config.model.top_k)
        better = {id(item): (tags, f) for (item, _), tags, f in zip(full, again, features)}
    for item in ready:  # a full decode that failed keeps the draft decode's answer
        tags, f = better.get(id(item), (item.tags, item.features))
        tagger._store(item.pending, tags, f, summary, counted=True)

def _drain_refined(tagger: Tagger, summary: ScanSummary) -> None:
    while tagger._refining:
        _collect_refined(tagger, summary, wait=True)
    tagger._refine_buffer.release()


def _decode_all(tagger: Tagger, reads: Sequence[_Read]) -> list[_InFlight]:
    """Decoding of files read and hashed, left running in the decoder threads."""
    spec, max_pixels = tagger.classifier.spec.preprocess, tagger.config.decode.max_pixels
    draft = draft_size(spec, tagger.config.decode.draft)
    return [
        _InFlight(r.path, r.mtime_ns, r.data, r.sha256, tagger._decoders.submit(_decode, r.data, max_pixels, spec, draft))
        for r in reads
    ]


def refine_budget(summary: ScanSummary, batch: int) -> int:
    """A model unsure of everything (random weights, or pictures unlike any class) would make
    every photo a near tie: at most a tenth of the photos, and one more, are decoded twice.

    On a cluster each batch gets the budget left when it is sent, so batches out at the same
    time may together use up to `cluster.in_flight` times that: still bounded."""
    return 1 + int(REFINE_SHARE * (summary.classified + batch)) - summary.refined


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


def near_ties(reduced: Sequence[bool], margins: Sequence[float], threshold: float, allowed: int) -> list[int]:
    """Which images of a batch to decode again in full (here and on cluster workers alike): reduced
    decodes whose best two guesses were within `decode.refine_margin`, at most `allowed` of them."""
    near = [i for i, (r, m) in enumerate(zip(reduced, margins)) if r and m < threshold]
    return near[: max(0, allowed)]


def _open_cluster(tagger: Tagger, config: Config, classifier: Classifier) -> OnCluster | None:
    """The cluster path where a scheduler is configured; without one, dask is never imported."""
    if config.cluster.scheduler is None:
        return None
    try:
        from tagger.cluster.coordinator import Cluster
        from tagger.cluster.backend import OnCluster
    except ImportError as exc:
        raise ConfigError(
            f"cluster.scheduler is set but Dask is not installed ({exc}): pip install 'tagger[cluster]'"
        ) from None
    return OnCluster(tagger, Cluster(config.cluster, job_settings(config, classifier)))


def job_settings(config: Config, classifier: Classifier) -> JobSettings:
    from tagger.cluster.coordinator import JobSettings
    from tagger.cluster.worker import ModelIdentity

    m, d = config.model, config.decode
    return JobSettings(ModelIdentity.of(classifier), m.top_k, d.max_pixels, d.draft, d.refine_margin)


def _bytes_held(ahead: deque[tuple[list[_InFlight], int]]) -> int:
    return sum(len(item.data) for batch, _ in ahead for item in batch)


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


def _read_and_hash(path: Path, max_bytes: int, folders: Folders) -> tuple[bytes, str] | DecodeError:
    try:
        data = read_limited(path, max_bytes, folders)
    except DecodeError as exc:
        return exc
    return data, hashlib.sha256(data).hexdigest()


def _decode(
    data: bytes, max_pixels: int, spec: Preprocess, draft: int | None, scratch: Scratch | None = None
) -> DecodedArray | DecodeError:
    try:
        return decode_array(data, max_pixels, spec, draft, scratch)
    except DecodeError as exc:
        return exc
    except Exception as exc:  # a decoder bug on one hostile file must not stop the scan
        return DecodeError(f"cannot decode: {type(exc).__name__}: {exc}")


def _chunks(items: Sequence[Path], size: int) -> Iterable[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
