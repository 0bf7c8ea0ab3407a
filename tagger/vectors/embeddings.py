"""Embeddings: the model's pooled features of each content, kept for similar images,
near-duplicates and learned tags.

New images get theirs from the same model run as their tags (tagger.library.scan); a library
tagged before embeddings existed is backfilled here, from one file per content.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.engine.classify import Classifier
from tagger.config import Config
from tagger.engine.decode import decode_array, draft_size
from tagger.engine.features import image_hash
from tagger.errors import DecodeError
from tagger.fileio import Folders, read_limited
from tagger.index import Index

log = logging.getLogger(__name__)

# A model run's view of one image: its features (the embedding) and the perceptual hash of
# the model's input (tagger.engine.features.image_hash), made where the input was (scan or worker).
Look = tuple[np.ndarray, int]


def save_embedding(
    store: Index, sha256: str, model: str, embedding: np.ndarray, hashed: int, learned: Sequence[tuple[str, float]]
) -> None:
    """Inside the transaction that saves the content's tags; `hashed` is the model input's image
    hash, `learned` the learned tags its embedding matches."""
    rows = store.vectors
    rows.save(sha256, model, embedding, hashed)
    rows.save_matches(sha256, learned)


@dataclass
class BackfillSummary:
    missing: int = 0
    computed: int = 0
    skipped: int = 0  # the file changed or could not be read: its next scan tags it anew


def backfill(
    config: Config,
    classifier: Classifier,
    store: Index,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> BackfillSummary:
    """Compute the embeddings that contents classified by this model lack (an index from before them)."""
    rows = store.vectors
    missing = rows.missing(classifier.name)
    summary = BackfillSummary(missing=len(missing))
    if not missing:
        return summary
    if on_start is not None:
        on_start(len(missing))
    spec = classifier.spec.preprocess
    draft = draft_size(spec, config.decode.draft)
    folders = Folders(config.folders)

    def load(item: tuple[str, str]) -> np.ndarray | None:
        sha256, path = item
        try:
            data = read_limited(Path(path), config.decode.max_file_bytes, folders)
            if hashlib.sha256(data).hexdigest() != sha256:
                return None
            return decode_array(data, config.decode.max_pixels, spec, draft).array
        except DecodeError as exc:
            log.warning("%s: no embedding: %s", path, exc)
            return None
        except Exception as exc:  # a decoder bug on one file must not stop the backfill
            log.warning("%s: no embedding: %s: %s", path, type(exc).__name__, exc)
            return None

    size = max(1, config.model.batch_size) * 4
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tagger-embed") as pool:
        for start in range(0, len(missing), size):
            if cancelled is not None and cancelled():
                break
            part = missing[start : start + size]
            arrays = list(pool.map(load, [(m.sha256, m.path) for m in part]))
            ready = [(m, a) for m, a in zip(part, arrays) if a is not None]
            summary.skipped += len(part) - len(ready)
            if ready:
                _, _, vectors = classifier.predict(np.stack([a for _, a in ready]), 1)
                with store.transaction("embeddings"):
                    for (m, array), vector in zip(ready, vectors):
                        rows.save(m.sha256, classifier.name, vector, image_hash(array))
                summary.computed += len(ready)
            if on_progress is not None:
                on_progress(len(part))
    return summary
