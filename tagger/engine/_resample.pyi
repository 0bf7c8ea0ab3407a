"""Types of the C extension built from tagger/_resample.c (see tagger/fastjpeg.py)."""
import numpy as np

def resize_rgbx(
    pixels: bytes | np.ndarray,
    width: int,
    height: int,
    box: tuple[float, float, float, float],
    out_width: int,
    out_height: int,
    bicubic: int,
    simd: int = ...,
) -> bytes: ...
def simd() -> str: ...
