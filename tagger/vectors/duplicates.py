"""Near-duplicates: the same picture resized, recompressed, slightly cropped or re-exported.

Embeddings alone cannot tell a copy from another shot of the same scene (a burst scores as
high as a recompressed copy: the model is built to ignore framing). So each content also
keeps a 64-bit perceptual hash of the model's input (low frequencies of its DCT), which
does change with the framing. Two contents are copies when both agree (thresholds measured
on real photos by bench/bench_quality.py):

    hash distance <= 10 bits and cosine >= 0.6     (resized, recompressed, re-exported)
    hash distance <= 16 bits and cosine >= 0.9     (slightly cropped: the hash moves more)

For the viewer's task (`find_groups`), each group is kept as compact tuples of paths and
contents with the copy suggested to keep: the most pixels, then an original format (camera
RAW, then the camera formats JPEG, HEIC and TIFF, over re-exports such as PNG or WebP), then
the oldest file (mtime). Groups come most space to free first.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tagger.engine.features import unit
from tagger.fileio import RAW_EXTENSIONS, VIDEO_EXTENSIONS
from tagger.index import Index
from tagger.index.duplicates import CopyFacts, DuplicateRows
from tagger.index.vectors import quantise
from tagger.vectors.similar import VectorMatrix

NEAR_BITS, NEAR_COSINE = 10, 0.6
CROP_BITS, CROP_COSINE = 16, 0.9
ROWS, COLS = 256, 4096  # hashes compared at once: a tile of 1 M distances (8 MB), not a row of N
PAIR_CHUNK = 4096  # candidate pairs whose cosine is taken at once: 2 x 4096 rows of float32 (40 MB at 1280-d)
# What a camera writes: kept over what was made from it (a PNG or WebP of a JPEG holds no more of the picture)
CAMERA_FORMATS = frozenset({".jpg", ".jpeg", ".jpe", ".heic", ".heif", ".tif", ".tiff"})
FORMAT_NAMES = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".heif": "HEIC"}

Progress = Callable[[float], None]  # the fraction of the work done, from 0 to 1


def is_copy(bits: int, cosine: float) -> bool:
    return (bits <= NEAR_BITS and cosine >= NEAR_COSINE) or (bits <= CROP_BITS and cosine >= CROP_COSINE)


@dataclass(frozen=True)
class Copy:
    sha256: str
    path: str
    pixels: int
    size: int


def near_hashes(
    hashes: np.ndarray, bits: int, rows: int = ROWS, cols: int = COLS, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose hashes differ in at most `bits` bits: every pair compared once.

    Quadratic (N^2 / 2 popcounts), in tiles small enough to stay in the CPU's cache, into
    buffers made once: 1.5 times faster than whole rows at 100,000 (bench/bench_vectors.py).
    `progress` hears the fraction of the comparisons done after each band of rows.
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
        if progress is not None:
            left_over = max(len(h) - start - rows, 0) / len(h)
            progress(1.0 - left_over * left_over)
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)


def copy_pairs(
    hashes: np.ndarray, vectors: np.ndarray, rows: np.ndarray | None = None, progress: Progress | None = None
) -> list[tuple[int, int]]:
    """Index pairs (i < j) that are copies of each other: hash distances first (about ten seconds
    at 100,000 contents, a tenth of a second at 10,000), cosine only for the pairs within CROP_BITS.

    `vectors` may be the memory-mapped matrix of every embedding, with `rows` giving each hash's
    row in it: only the rows of candidate pairs are read, a chunk at a time (never a float copy of
    the whole matrix, which took 1.5 GB at 150,000 embeddings)."""
    h = np.asarray(hashes, dtype=np.int64).view(np.uint64)
    i, j = near_hashes(hashes, CROP_BITS, progress=progress)
    if not len(i):
        return []
    at = np.arange(len(h)) if rows is None else np.asarray(rows, dtype=np.int64)
    cosines = np.empty(len(i), np.float32)
    for start in range(0, len(i), PAIR_CHUNK):
        a, b = at[i[start : start + PAIR_CHUNK]], at[j[start : start + PAIR_CHUNK]]
        left, right = unit(quantise(np.asarray(vectors[a]))), unit(quantise(np.asarray(vectors[b])))
        cosines[start : start + len(a)] = np.einsum("ij,ij->i", left, right)
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


def content_groups(store: Index, progress: Progress | None = None) -> list[list[str]]:
    """Groups of contents (sha256s) that are copies: near-duplicates by hash and cosine, and
    contents held by more than one file (each then a group of one content)."""
    rows = store.vectors
    model = rows.main_model()
    found: list[list[str]] = []
    if model is not None:
        shas, hashes = rows.hashes(model)
        matrix = VectorMatrix.load(store, model)
        present = [i for i, sha in enumerate(shas) if sha in matrix.row]
        shas = [shas[i] for i in present]
        at = np.array([matrix.row[sha] for sha in shas], dtype=np.int64)
        pairs = copy_pairs(hashes[present], matrix.matrix, at, progress)
        found = [[shas[i] for i in members] for members in groups(len(shas), pairs)]
    grouped = {sha for group in found for sha in group}
    return found + [[sha] for sha in rows.copies_by_content() if sha not in grouped]


def find_duplicates(store: Index) -> list[list[Copy]]:
    """Groups of copies, each largest first: near-duplicates, and files with the same bytes."""
    return copies_of(store, content_groups(store))


def copies_of(store: Index, content: list[list[str]]) -> list[list[Copy]]:
    """Groups of contents as groups of files (those with more than one), each largest first, by path."""
    rows = store.vectors
    all_shas = [sha for group in content for sha in group]
    paths, sizes = rows.paths_of(all_shas), rows.sizes_of(all_shas)
    result = []
    for group in content:
        copies = []
        for sha in group:
            width, height, size = sizes.get(sha, (0, 0, 0))
            copies += [Copy(sha, path, width * height, size) for path in paths.get(sha, [])]
        if len(copies) > 1:
            result.append(largest_first(copies))
    return sorted(result, key=lambda g: g[0].path)


def format_of(path: str) -> str:
    """The file's format as the page names it, from its extension: JPEG, PNG, HEIC, CR2."""
    extension = os.path.splitext(path)[1].lower()
    return FORMAT_NAMES.get(extension, extension.lstrip(".").upper() or "?")


def origin_rank(path: str) -> int:
    """0 for camera RAW, 1 for the other formats cameras write, 2 for what is made from them."""
    extension = os.path.splitext(path)[1].lower()
    if extension in RAW_EXTENSIONS:
        return 0
    return 1 if extension in CAMERA_FORMATS or extension in VIDEO_EXTENSIONS else 2


def keep_order(copy: CopyFacts) -> tuple[int, int, int, str]:
    """The suggestion rule, best first: most pixels, then an original format, then the oldest."""
    return (-copy.width * copy.height, origin_rank(copy.path), copy.mtime_ns, copy.path)


class Group(NamedTuple):
    """One group of copies, as little as will do: paths largest first (pixels, then bytes), as the
    API has always listed them, each one's content, the suggested copy and the bytes the rest take."""

    paths: tuple[str, ...]
    shas: tuple[str, ...]
    keep: int  # position in `paths` of the copy suggested to keep
    freed: int  # bytes freed by following the suggestion


def make_group(copies: Iterable[CopyFacts]) -> Group | None:
    """The group of these copies; None for fewer than two."""
    ordered = sorted(copies, key=lambda c: (-c.width * c.height, -c.size, c.path))
    if len(ordered) < 2:
        return None
    best = min(ordered, key=keep_order)
    return Group(
        tuple(c.path for c in ordered), tuple(c.sha256 for c in ordered), ordered.index(best),
        sum(c.size for c in ordered if c is not best),
    )


def space_first(groups: Iterable[Group]) -> list[Group]:
    return sorted(groups, key=lambda g: (-g.freed, g.paths[0]))


@dataclass(frozen=True)
class Duplicates:
    """Every group of copies of one state of the index (`key`: DuplicateRows.state_key), with its totals."""

    key: tuple[object, ...]
    groups: tuple[Group, ...]
    files: int
    freed: int

    @classmethod
    def of(cls, key: tuple[object, ...], groups: Iterable[Group]) -> Duplicates:
        ordered = tuple(space_first(groups))
        return cls(key, ordered, sum(len(g.paths) for g in ordered), sum(g.freed for g in ordered))

    def group_of(self, path: str) -> Group | None:
        """The group holding `path` (a pass over the groups: only a form's posting asks)."""
        return next((g for g in self.groups if path in g.paths), None)

    def replaced(self, old: Group, new: Group | None, key: tuple[object, ...]) -> Duplicates:
        """These groups with `old` changed to `new` (or gone), as of index state `key`."""
        kept = [g for g in self.groups if g is not old]
        return Duplicates.of(key, kept if new is None else [*kept, new])


def find_groups(store: Index, progress: Progress | None = None) -> Duplicates:
    """Every group of copies with its suggestion, for the viewer's duplicates task.

    The key is read first: whatever changes while the groups are computed makes it stale, so that
    it is computed again, never the other way round."""
    facts = DuplicateRows(store.conn)
    key = facts.state_key()
    found = content_groups(store, None if progress is None else lambda done: progress(0.95 * done))
    by_sha: dict[str, list[CopyFacts]] = {}
    for copy in facts.copies_of([sha for group in found for sha in group]):
        by_sha.setdefault(copy.sha256, []).append(copy)
    made = (make_group(c for sha in group for c in by_sha.get(sha, [])) for group in found)
    result = Duplicates.of(key, (g for g in made if g is not None))
    if progress is not None:
        progress(1.0)
    return result


def regroup(store: Index, group: Group, gone: Iterable[str]) -> Group | None:
    """`group` without the paths `gone`, its suggestion made again from the index as it is now."""
    taken = set(gone)
    left = [p for p in group.paths if p not in taken]
    return make_group(DuplicateRows(store.conn).copies_at(left).values())
