"""Similar images: cosine similarity of embeddings, searched exactly over a memory-mapped matrix.

The index keeps each embedding as int8 (one scale per vector, which cosine ignores); searches
read them as one matrix, cached beside the index in `<index>.vectors/` and rebuilt when the
embeddings change. Exact search with usearch's SIMD kernel takes about 0.1 s at a
million images (bench/bench_similar.py) and needs no approximate index kept in step.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError
from tagger.index import Index
from tagger.index.vectors import VectorRows, quantise


@dataclass(frozen=True)
class Match:
    sha256: str
    score: float  # cosine similarity, 1.0 for the same picture


def cosine(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of `query` with every row (for small sets; big ones go through `nearest`)."""
    m = np.asarray(matrix, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(m, axis=1) * np.linalg.norm(q), 1e-12)
    result: np.ndarray = (m @ q) / norms
    return result


class VectorMatrix:
    """Every embedding of one model: sha256s and an N x D int8 matrix (memory-mapped)."""

    def __init__(self, shas: list[str], matrix: np.ndarray) -> None:
        self.shas = shas
        self.matrix = matrix
        self.row = {sha: i for i, sha in enumerate(shas)}

    def __len__(self) -> int:
        return len(self.shas)

    @classmethod
    def load(cls, store: Index, model: str) -> VectorMatrix:
        """The cached matrix when it is current, else rebuilt from the index (once per change)."""
        rows = VectorRows(store.conn)
        version = rows.version(model)
        folder = Path(str(store.path) + ".vectors")
        stem = folder / model
        meta_path, shas_path, matrix_path = (stem.with_suffix(s) for s in (".json", ".shas", ".i8"))
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("version") == list(version):
                shas_bytes = shas_path.read_bytes()
                shas = [shas_bytes[i : i + 32].hex() for i in range(0, len(shas_bytes), 32)]
                if not shas:
                    return cls([], np.zeros((0, 0), np.int8))
                mapped = np.memmap(matrix_path, dtype=np.int8, mode="r", shape=(len(shas), int(meta["dims"])))
                return cls(shas, mapped)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        shas, parts = [], []
        for chunk_shas, chunk in rows.all_vectors(model):
            shas.extend(chunk_shas)
            parts.append(chunk)
        matrix = np.concatenate(parts) if parts else np.zeros((0, 0), np.int8)
        try:
            _write_cache(folder, stem, version, shas, matrix)
        except OSError:
            pass  # a read-only place: searched from memory this time
        return cls(shas, matrix)

    def nearest(self, query: np.ndarray, limit: int, exclude: set[str] | None = None) -> list[Match]:
        """The `limit` most similar contents, best first (`exclude`: contents not to return)."""
        if not len(self) or limit <= 0:
            return []
        exclude = exclude or set()
        count = min(len(self), limit + len(exclude))
        q = quantise(np.asarray(query, dtype=np.float32)[None])[0]
        if len(self) <= 20000:
            scores = cosine(self.matrix, q)
            order = np.argsort(-scores, kind="stable")[:count]
            found = [(int(i), float(scores[i])) for i in order]
        else:
            from usearch.index import search

            result = search(self.matrix, q, count, "cos", exact=True, threads=os.cpu_count() or 1)
            found = [(int(k), 1.0 - float(d)) for k, d in zip(result.keys, result.distances)]
        matches = [Match(self.shas[i], score) for i, score in found if self.shas[i] not in exclude]
        return matches[:limit]


def _write_cache(folder: Path, stem: Path, version: tuple[int, str], shas: list[str], matrix: np.ndarray) -> None:
    """Matrix and names first, the version last: a cache cut short is never taken as current."""
    folder.mkdir(exist_ok=True)
    for suffix, data in ((".i8", matrix.tobytes()), (".shas", b"".join(bytes.fromhex(s) for s in shas))):
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, prefix=".tmp-") as tmp:
            tmp.write(data)
        os.replace(tmp.name, stem.with_suffix(suffix))
    meta = {"version": list(version), "dims": int(matrix.shape[1]) if matrix.size else 0, "count": len(shas)}
    stem.with_suffix(".json").write_text(json.dumps(meta))


def similar_to(store: Index, sha256: str, limit: int) -> list[Match]:
    """Contents most like `sha256` (itself left out), best first, among those of the same model."""
    found = VectorRows(store.conn).vector(sha256)
    if found is None:
        raise TaggerError("this image has no embedding yet (run `tagger scan` to compute it)")
    model, query = found
    return VectorMatrix.load(store, model).nearest(query, limit, exclude={sha256})
