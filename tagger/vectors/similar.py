"""Similar images: cosine similarity of embeddings over a memory-mapped matrix.

The index keeps each embedding as int8 (one scale per vector, which cosine ignores); searches
read them as one matrix, cached beside the index in `<index>.vectors/`, appended to when
embeddings were only added since, rebuilt when they changed otherwise. Up to EXACT_BELOW images every row is scored. Above, a bit code of each
embedding (the signs of its difference from the library's mean direction: 160 bytes for
1280 numbers, an eighth of the matrix) picks a shortlist by Hamming distance with usearch's
SIMD kernel, and the shortlist is scored exactly: a third of the time of scoring every row
at a million images, with the same top 20 on the benchmark (bench/bench_vectors.py). Nothing
to build but the codes, which are rebuilt with the matrix.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, overload

import numpy as np

from tagger.engine.features import row_lengths, unit

from tagger.errors import TaggerError
from tagger.index import Index
from tagger.index.vectors import EmbeddingState, VectorRows, quantise

EXACT_BELOW = 20000  # up to this many rows, all are scored
SHORTLIST = 2000  # rows the bit codes pass on to exact scoring: at least this many,
PER_RESULT = 50  # and this many per result asked for
CACHE_FORMAT = 3  # the cache's layout (2: with bit codes, 3: what it was made from); another is rebuilt


@dataclass(frozen=True)
class Match:
    sha256: str
    score: float  # cosine similarity, 1.0 for the same picture


def cosine(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of `query` with every row (for small sets; big ones go through `nearest`)."""
    m = np.asarray(matrix, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    result: np.ndarray = unit(m) @ unit(q)
    return result


def mean_and_codes(matrix: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the unit rows (subtracted before taking signs, so that every bit splits the
    library), then the codes against it: two passes, each row's length found once."""
    lengths = np.empty(len(matrix), np.float32)
    total = np.zeros(matrix.shape[1] if matrix.ndim == 2 else 0, np.float64)
    for start in range(0, len(matrix), chunk):
        rows = np.asarray(matrix[start : start + chunk], dtype=np.float32)
        lengths[start : start + len(rows)] = row_lengths(rows)
        total += (rows / lengths[start : start + len(rows), None]).sum(axis=0)
    mean = (total / max(len(matrix), 1)).astype(np.float32)
    return mean, bit_codes(matrix, mean, chunk, lengths)


def bit_codes(matrix: np.ndarray, mean: np.ndarray, chunk: int = 65536, lengths: np.ndarray | None = None) -> np.ndarray:
    """N x ceil(D / 8) packed signs of (unit row - mean): near rows have near codes."""
    codes = np.zeros((len(matrix), (len(mean) + 7) // 8), np.uint8)
    for start in range(0, len(matrix), chunk):
        rows = np.asarray(matrix[start : start + chunk], dtype=np.float32)
        norms = row_lengths(rows) if lengths is None else lengths[start : start + len(rows)]
        codes[start : start + chunk] = np.packbits(rows / norms[:, None] > mean, axis=-1)
    return codes


class Shas(Sequence[str]):
    """The sha256s of the matrix's rows, kept as N x 32 bytes (memory-mapped from the cache):
    opening a million-row library makes no million Python strings; rows are named on demand."""

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw

    @classmethod
    def of(cls, shas: Sequence[str]) -> Shas:
        return cls(np.frombuffer(b"".join(bytes.fromhex(s) for s in shas), np.uint8).reshape(len(shas), 32))

    def __len__(self) -> int:
        return len(self.raw)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [bytes(row).hex() for row in self.raw[i]]
        return bytes(self.raw[i]).hex()


class VectorMatrix:
    """Every embedding of one model: sha256s, an N x D int8 matrix and its bit codes (memory-mapped)."""

    def __init__(self, shas: Sequence[str], matrix: np.ndarray, mean: np.ndarray | None = None,
                 codes: np.ndarray | None = None) -> None:
        self.shas = shas if isinstance(shas, Shas) else Shas.of(shas)
        self.matrix = matrix
        if mean is None:
            mean, made = mean_and_codes(matrix)
            codes = made if codes is None else codes
        elif codes is None and len(shas) > EXACT_BELOW:
            codes = bit_codes(matrix, mean)
        self.mean = mean
        self.codes = codes

    @cached_property
    def row(self) -> dict[str, int]:
        """Row of each sha256: made on first use (learned tags and duplicates), never by a search."""
        return {sha: i for i, sha in enumerate(self.shas)}

    def __len__(self) -> int:
        return len(self.shas)

    @classmethod
    def load(cls, store: Index, model: str) -> VectorMatrix:
        """The cached matrix when it is current; else grown by the embeddings added since it was
        written when nothing else changed (_append), else rebuilt from the index."""
        rows = store.vectors
        stem = Path(str(store.path) + ".vectors") / model
        meta = _read_meta(stem)
        if meta is not None and meta.get("version") == rows.version(model):
            found = _open_cache(stem, meta)
            if found is not None and _read_meta(stem) == meta:  # not rewritten while being opened
                return found
        try:
            with _locked(stem), rows.snapshot():  # one writer at a time, at the latest state
                state = rows.state(model)
                meta = _read_meta(stem)
                if meta is not None and meta.get("version") == state.stamp:
                    found = _open_cache(stem, meta)
                    if found is not None:
                        return found
                found = None if meta is None else _append(stem, meta, state, rows, model)
                if found is not None:
                    return found
                start = {"version": state.stamp, "rows": state.rows, "removals": state.removals}
                return cls(*_rebuild_cache(stem.parent, stem, start, rows.newest(model), rows.all_vectors(model)))
        except OSError:  # a read-only place: built in memory, searched from there this time
            shas: list[str] = []
            parts = []
            with rows.snapshot():
                for chunk_shas, chunk in rows.all_vectors(model):
                    shas.extend(chunk_shas)
                    parts.append(chunk)
            matrix = np.concatenate(parts) if parts else np.zeros((0, 0), np.int8)
            return cls(shas, matrix, *mean_and_codes(matrix))

    def shortlist(self, query: np.ndarray, count: int) -> np.ndarray:
        """Rows (ascending) whose bit codes are nearest the query's: the candidates for exact scoring."""
        from usearch.index import search

        assert self.codes is not None
        size = min(len(self), max(SHORTLIST, PER_RESULT * count))
        code = np.packbits(unit(query) > self.mean)
        found = search(self.codes, code, size, "hamming", exact=True, threads=os.cpu_count() or 1)
        rows: np.ndarray = np.sort(np.asarray(found.keys, dtype=np.int64))
        return rows

    def nearest(self, query: np.ndarray, limit: int, exclude: set[str] | None = None, exact: bool = False) -> list[Match]:
        """The `limit` most similar contents, best first (`exclude`: contents not to return).

        `exact` scores every row even in a large library (for measuring the shortlist)."""
        if not len(self) or limit <= 0:
            return []
        exclude = exclude or set()
        count = min(len(self), limit + len(exclude))
        q = quantise(np.asarray(query, dtype=np.float32)[None])[0]
        if len(self) <= EXACT_BELOW:
            rows, scores = np.arange(len(self)), cosine(self.matrix, q)
        elif exact or self.codes is None:
            from usearch.index import search

            found = search(self.matrix, q, count, "cos", exact=True, threads=os.cpu_count() or 1)
            rows, scores = np.asarray(found.keys, dtype=np.int64), 1.0 - np.asarray(found.distances, dtype=np.float32)
        else:
            rows = self.shortlist(q, count)
            scores = cosine(self.matrix[rows], q)
        order = np.argsort(-scores, kind="stable")[:count]  # ties: the earlier row first
        matches = [Match(self.shas[int(rows[i])], float(scores[i])) for i in order]
        return [m for m in matches if m.sha256 not in exclude][:limit]


@contextmanager
def _locked(stem: Path) -> Iterator[None]:
    """The model's cache written by one process at a time (readers take no lock: an append
    leaves the rows they map as they were, a rebuild replaces the files)."""
    stem.parent.mkdir(exist_ok=True)
    with open(stem.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # unlocked when closed


def _read_meta(stem: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None


def _write_meta(stem: Path, meta: dict[str, Any]) -> None:
    with tempfile.NamedTemporaryFile("w", dir=stem.parent, delete=False, prefix=".tmp-") as tmp:
        tmp.write(json.dumps(meta))
    os.replace(tmp.name, stem.with_suffix(".json"))


def _open_cache(stem: Path, meta: dict[str, Any]) -> VectorMatrix | None:
    """The cache's files mapped, or None unless each holds exactly the meta's `count` rows (an
    append or a rebuild cut short, a damaged file)."""
    try:
        count, dims = int(meta["count"]), int(meta["dims"])
        if not count:
            return VectorMatrix([], np.zeros((0, 0), np.int8))
        sizes = {".i8": count * dims, ".shas": count * 32, ".b1": count * ((dims + 7) // 8), ".mean": 4 * dims}
        if any(stem.with_suffix(suffix).stat().st_size != size for suffix, size in sizes.items()):
            return None
        named = Shas(np.memmap(stem.with_suffix(".shas"), dtype=np.uint8, mode="r", shape=(count, 32)))
        mapped = np.memmap(stem.with_suffix(".i8"), dtype=np.int8, mode="r", shape=(count, dims))
        mean = np.fromfile(stem.with_suffix(".mean"), dtype="<f4")
        codes = np.memmap(stem.with_suffix(".b1"), dtype=np.uint8, mode="r", shape=(count, (dims + 7) // 8))
        return VectorMatrix(named, mapped, mean, codes)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _append(stem: Path, meta: dict[str, Any], state: EmbeddingState, rows: VectorRows, model: str
            ) -> VectorMatrix | None:
    """The cache grown in place by the embeddings added since it was written; None (rebuild it)
    when anything else changed, or might have.

    Only additions: `removals` is as it was. They are the rows written at or after the cache's
    newest (`last`) but those it holds (`at_last`), and there must be exactly as many as `rows`
    grew by: a row written with an earlier time (a clock set back) makes the count differ. The
    new rows' codes are taken with the cache's mean, as the last rebuild found it: the mean is
    only refreshed by a rebuild (one is done when the additions outnumber the cache). The meta
    goes first and comes back last, so that an append cut short is never taken as current; rows
    are written after the meta's `count`, which readers holding the cache never look past."""
    whole = _open_cache(stem, meta)
    try:
        count, dims, last, at_last = int(meta["count"]), int(meta["dims"]), str(meta["last"]), set(meta["at_last"])
        added = state.rows - int(meta["rows"])
        if whole is None or not count or meta["removals"] != state.removals or not 0 < added <= count:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    since = rows.written_since(model, last)
    new = [(sha, at, blob) for sha, at, blob in since if not (at == last and sha in at_last)]
    if len(new) != added or len(since) - len(new) != len(at_last) or any(len(b) != dims for _, _, b in new):
        return None
    block = np.frombuffer(b"".join(blob for _, _, blob in new), np.int8).reshape(len(new), dims)
    codes = bit_codes(block, whole.mean)
    newest = new[-1][1]  # in written_at order
    stem.with_suffix(".json").unlink()
    for suffix, width, data in ((".i8", dims, block.tobytes()), (".b1", codes.shape[1], codes.tobytes()),
                                (".shas", 32, Shas.of([sha for sha, _, _ in new]).raw.tobytes())):
        with open(stem.with_suffix(suffix), "r+b") as out:
            out.seek(count * width)
            out.write(data)
    grown = {**meta, "version": state.stamp, "rows": state.rows, "count": count + added, "last": newest,
             "at_last": sorted(sha for sha, at, _ in since if at == newest)}
    _write_meta(stem, grown)
    return _open_cache(stem, grown)


def _rebuild_cache(folder: Path, stem: Path, start: dict[str, Any], newest: tuple[str, list[str]],
                   chunks: Iterable[tuple[list[str], np.ndarray]]) -> tuple[Shas, np.ndarray, np.ndarray, np.ndarray]:
    """The matrix written chunk by chunk as it is read (never twice in memory: 1.2 GB at a million),
    then its codes, mean and names; the meta goes last, and the old one first, so that a cache
    cut short is never taken as current. `start`: the state of the embeddings it is made from
    (version, rows, removals), `newest`: their latest written_at and the sha256s written then.
    Returns (shas, mapped matrix, mean, codes)."""
    folder.mkdir(exist_ok=True)
    stem.with_suffix(".json").unlink(missing_ok=True)
    shas: list[str] = []
    dims = 0
    with tempfile.NamedTemporaryFile(dir=folder, delete=False, prefix=".tmp-") as out:
        try:
            for chunk_shas, chunk in chunks:
                shas.extend(chunk_shas)
                dims = chunk.shape[1]
                out.write(chunk.tobytes())
        except BaseException:  # a full disk, a stop: no half-written matrix left behind
            os.unlink(out.name)
            raise
    if not shas:
        os.unlink(out.name)
        matrix = np.zeros((0, 0), np.int8)
    else:
        os.replace(out.name, stem.with_suffix(".i8"))
        matrix = np.memmap(stem.with_suffix(".i8"), dtype=np.int8, mode="r", shape=(len(shas), dims))
    mean, codes = mean_and_codes(matrix)
    named = Shas.of(shas)
    for suffix, data in ((".shas", named.raw.tobytes()), (".mean", mean.astype("<f4").tobytes()),
                         (".b1", codes.tobytes())):
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, prefix=".tmp-") as tmp:
            tmp.write(data)
        os.replace(tmp.name, stem.with_suffix(suffix))
    last, at_last = newest
    _write_meta(stem, {**start, "format": CACHE_FORMAT, "dims": dims, "count": len(shas), "last": last,
                       "at_last": at_last})
    return named, matrix, mean, codes


def similar_to(store: Index, sha256: str, limit: int) -> list[Match]:
    """Contents most like `sha256` (itself left out), best first, among those of the same model."""
    found = store.vectors.vector(sha256)
    if found is None:
        raise TaggerError("this image has no embedding yet (run `tagger scan` to compute it)")
    model, query = found
    return VectorMatrix.load(store, model).nearest(query, limit, exclude={sha256})
