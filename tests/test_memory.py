"""Photo buffers: under glibc's fixed mmap threshold, Pillow's blocks are reused from the heap."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tagger.memory import MMAP_THRESHOLD, return_big_buffers


def test_pillow_blocks_fit_under_the_threshold_and_keep_the_pixels() -> None:
    """A 12-megapixel photo spans a dozen blocks now: its pixels must come back unchanged."""
    if not return_big_buffers():  # another C library: nothing is changed, nothing to check
        assert Image.core.get_block_size() == 16 << 20
        return
    assert 0 < Image.core.get_block_size() < MMAP_THRESHOLD
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(3000, 4000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        img.load()
        assert np.array_equal(np.asarray(img), pixels)
