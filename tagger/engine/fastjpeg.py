"""JPEG decoding and crop resizing in less time, with exactly Pillow's pixels.

Near ties flip on one 8-bit step, so the model's input must be bit-identical to the reference
path (Pillow's decode, then Pillow's resize). Two C pieces make the same bits faster:
- libjpeg-turbo through simplejpeg decodes into a numpy array of RGBX pixels, the layout Pillow
  keeps internally, with the same IDCT and upsampling Pillow asks for, at the same 1/s scale
  as Pillow's draft mode, into a buffer that can be reused (no fresh 48 MB to fault in).
- `tagger.engine._resample` (built at install) resizes with Pillow's integer weights and sums, 16 at a
  time in AVX2 lanes where the CPU has them, in NEON lanes on ARM64, and in a plain C loop on
  an x86 without AVX2 (still exact).
Measured on 4000x3000 photos, decode to model input: in full 87-89 -> 30 ms, at 1/4 (the scan's
draft) 16.5-17.2 -> 14.0 ms. Either piece missing (no compiler at install, another platform)
leaves `AVAILABLE` False, and tagger.engine.decode uses Pillow alone, as before.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

try:
    import simplejpeg

    import tagger.engine._resample as _resample

    BUILT = True
except ImportError:  # pragma: no cover - a build without a C compiler: the Pillow path is used
    BUILT = False
# TAGGER_FASTJPEG=0 makes Pillow do it all, as before (bench/bench_scan.py compares the two).
AVAILABLE = BUILT and os.environ.get("TAGGER_FASTJPEG", "1") != "0"

# A full decode's buffer is kept for reuse up to this size (a 16-megapixel photo's RGBX pixels).
MAX_KEPT_BYTES = 64 << 20


class Scratch:
    """One reusable output buffer for the full decodes of one thread at a time (the near-tie refiner).

    A fresh 48 MB array is 12,000 pages for the kernel to zero and map at each full decode: 7-10
    ms of a 21 ms decode. `release` gives it back (the end of a scan, the end of a daemon batch).
    """

    def __init__(self) -> None:
        self._buffer: np.ndarray | None = None
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self, nbytes: int) -> Iterator[np.ndarray | None]:
        """A buffer of at least nbytes while the block runs; None when too big to keep or in use."""
        if nbytes > MAX_KEPT_BYTES or not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            if self._buffer is None or self._buffer.size < nbytes:
                self._buffer = None
                self._buffer = np.empty(nbytes, dtype=np.uint8)
            yield self._buffer
        finally:
            self._lock.release()

    def release(self) -> None:
        with self._lock:
            self._buffer = None


def decode_rgbx(data: bytes, width: int, height: int, buffer: np.ndarray | None = None) -> np.ndarray | None:
    """The JPEG's pixels at width x height, a size its DCT scaling gives (the full size, or Pillow's
    draft size at 1/2, 1/4 or 1/8), RGBX, height x width x 4.

    With `buffer`, the pixels are a view of it. None when libjpeg-turbo reports anything (corrupt
    data, an unexpected size): the caller then decodes with Pillow, whose error message or
    tolerance is the one users already know.
    """
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGBX", min_width=width, min_height=height, buffer=buffer, strict=True)
    except (ValueError, TypeError, OSError):
        return None
    return pixels if pixels.shape == (height, width, 4) else None


def resize_rgbx(
    pixels: np.ndarray, box: tuple[float, float, float, float], size: int, bicubic: bool
) -> np.ndarray:
    """Pillow's `resize((size, size), BICUBIC or BILINEAR, box=box)`, horizontal pass first: RGB uint8."""
    height, width = pixels.shape[:2]
    out = _resample.resize_rgbx(np.ascontiguousarray(pixels), width, height, box, size, size, int(bicubic))
    return np.frombuffer(out, dtype=np.uint8).reshape(size, size, 3)


def describe() -> str:
    """Which JPEG path a scan takes here, for `tagger weights` and the benchmark."""
    if not BUILT:
        return "Pillow alone (tagger.engine._resample was not built: no C compiler at install?)"
    if not AVAILABLE:
        return "Pillow alone (TAGGER_FASTJPEG=0)"
    return f"libjpeg-turbo via simplejpeg {simplejpeg.__version__}, tagger.engine._resample ({_resample.simd()} lanes)"
