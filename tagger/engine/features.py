"""What a model run gives besides tags: the unit-length embedding and the input's perceptual hash.

One L2 normalisation for all of tagger: the classifier's embeddings, stored vectors read back,
learned tags and similar images all go through `unit`, so that a cosine is a dot product everywhere.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def unit(vectors: np.ndarray) -> np.ndarray:
    """float32 vectors of length one along the last axis (a zero vector stays zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    result: np.ndarray = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return result


def row_lengths(rows: np.ndarray) -> np.ndarray:
    """Each row's L2 length, never below 1e-12 (a divisor)."""
    result: np.ndarray = np.maximum(np.linalg.norm(rows, axis=-1), 1e-12)
    return result


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    matrix: np.ndarray = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


def image_hash(array: np.ndarray) -> int:
    """64 bits of the model's input (C x H x W): signs of the 8 x 8 lowest DCT frequencies of its
    32 x 32 grey version, against their median (the constant term left out). As a signed int64.
    About half a millisecond an image (sums in float32: a scale does not change the bits)."""
    grey = np.asarray(array, dtype=np.float32).sum(axis=0)
    h, w = grey.shape[0] // 32, grey.shape[1] // 32
    small = grey[: 32 * h, : 32 * w].reshape(32, h, -1).sum(axis=1).reshape(32, 32, w).sum(axis=2)
    dct = _dct_matrix(32)[:8]
    low = (dct @ small.astype(np.float64) @ dct.T).ravel()
    bits = low > np.median(low[1:])
    bits[0] = False
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= 1 << 63 else value
