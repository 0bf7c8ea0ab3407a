"""Near-duplicates: the same picture resized, recompressed, slightly cropped or re-exported.

Embeddings alone cannot tell a copy from another shot of the same scene (a burst scores as
high as a recompressed copy: the model is built to ignore framing). So each content also
keeps a 64-bit perceptual hash of the model's input (low frequencies of its DCT), which
does change with the framing. Two contents are copies when both agree (thresholds measured
on real photos by bench/bench_quality.py):

    hash distance <= 10 bits and cosine >= 0.6     (resized, recompressed, re-exported)
    hash distance <= 16 bits and cosine >= 0.9     (slightly cropped: the hash moves more)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tagger.engine.features import unit

from tagger.vectors.similar import VectorMatrix
from tagger.index import Index
from tagger.index.vectors import quantise

NEAR_BITS, NEAR_COSINE = 10, 0.6
CROP_BITS, CROP_COSINE = 16, 0.9
ROWS, COLS = 256, 4096  # hashes compared at once: a tile of 1 M distances (8 MB), not a row of N


def is_copy(bits: int, cosine: float) -> bool:
    return (bits <= NEAR_BITS and cosine >= NEAR_COSINE) or (bits <= CROP_BITS and cosine >= CROP_COSINE)


@dataclass(frozen=True)
class Copy:
    sha256: str
    path: str
    pixels: int
    size: int


def near_hashes(hashes: np.ndarray, bits: int, rows: int = ROWS, cols: int = COLS) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose hashes differ in at most `bits` bits: every pair compared once.

    Quadratic (N^2 / 2 popcounts), in tiles small enough to stay in the CPU's cache, into
    buffers made once: 1.5 times faster than whole rows at 100,000 (bench/bench_vectors.py).
    """
    h = np.asarray(hashes, dtype=np.int64).view(np.uint64)
    xor, count = np.empty((rows, cols), np.uint64), np.empty((rows, cols), np.uint8)
    near = np.empty((rows, cols), bool)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for start in range(0, len(h), rows):
        left = h[start : start + rows, None]
        for first in range(start, len(h), cols):
            right = h[None, first : first + cols]
            shape = (len(left), right.shape[1])
            x, c, n = xor[: shape[0], : shape[1]], count[: shape[0], : shape[1]], near[: shape[0], : shape[1]]
            np.bitwise_xor(left, right, out=x)
            np.bitwise_count(x, out=c)
            np.less_equal(c, bits, out=n)
            if n.any():
                i, j = np.nonzero(n)
                i, j = i + start, j + first
                keep = j > i  # each pair once, not a content with itself
                found_i.append(i[keep])
                found_j.append(j[keep])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)


def copy_pairs(hashes: np.ndarray, vectors: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i < j) that are copies of each other: hash distances first (about ten seconds
    at 100,000 contents, a tenth of a second at 10,000), cosine only for the pairs within CROP_BITS."""
    h = np.asarray(hashes, dtype=np.int64).view(np.uint64)
    i, j = near_hashes(hashes, CROP_BITS)
    if not len(i):
        return []
    v = unit(quantise(vectors))
    cosines = np.einsum("ij,ij->i", v[i], v[j])
    bits = np.bitwise_count(h[i] ^ h[j])
    return [(a, b) for a, b, d, c in zip(i.tolist(), j.tolist(), bits.tolist(), cosines.tolist()) if is_copy(int(d), float(c))]


def groups(count: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected groups (union-find) of two or more members."""
    parent = list(range(count))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    found: dict[int, list[int]] = {}
    for i in range(count):
        found.setdefault(root(i), []).append(i)
    return [members for members in found.values() if len(members) > 1]


def largest_first(copies: list[Copy]) -> list[Copy]:
    """The largest copy (pixels, then bytes) first: the one to keep."""
    return sorted(copies, key=lambda c: (-c.pixels, -c.size, c.path))


def find_duplicates(store: Index) -> list[list[Copy]]:
    """Groups of copies, each largest first: near-duplicates, and files with the same bytes."""
    rows = store.vectors
    model = rows.main_model()
    content_groups: list[list[str]] = []
    if model is not None:
        shas, hashes = rows.hashes(model)
        matrix = VectorMatrix.load(store, model)
        present = [i for i, sha in enumerate(shas) if sha in matrix.row]
        shas = [shas[i] for i in present]
        vectors = np.asarray(matrix.matrix)[[matrix.row[sha] for sha in shas]] if shas else np.zeros((0, 1))
        pairs = copy_pairs(hashes[present], vectors)
        content_groups = [[shas[i] for i in members] for members in groups(len(shas), pairs)]
    grouped = {sha for group in content_groups for sha in group}
    content_groups += [[sha] for sha in rows.copies_by_content() if sha not in grouped]
    all_shas = [sha for group in content_groups for sha in group]
    paths, sizes = rows.paths_of(all_shas), rows.sizes_of(all_shas)
    result = []
    for group in content_groups:
        copies = []
        for sha in group:
            width, height, size = sizes.get(sha, (0, 0, 0))
            copies += [Copy(sha, path, width * height, size) for path in paths.get(sha, [])]
        if len(copies) > 1:
            result.append(largest_first(copies))
    return sorted(result, key=lambda g: g[0].path)
