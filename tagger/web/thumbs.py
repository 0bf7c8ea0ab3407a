"""Thumbnails and screen-sized previews: made once, upright, cached on disk by content.

The cache key is the content's sha256 and the size, so a renamed or copied photo reuses
its thumbnail and an edited one gets a new one. JPEGs are decoded at a reduced scale
(draft): a 12-megapixel photo becomes a thumbnail in tens of milliseconds.
"""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

from PIL import Image

from tagger.engine.decode import decode_bytes
from tagger.fileio import read_limited
from tagger.fileio import write_atomic

log = logging.getLogger(__name__)

PREVIEW_SIZE = 1600  # the image page's picture: screen-sized, not the 12-megapixel original


class Thumbnails:
    def __init__(self, folder: Path, max_pixels: int, max_bytes: int) -> None:
        self.folder = folder
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def cached(self, sha256: str, size: int) -> Path:
        return self.folder / sha256[:2] / f"{sha256}-{size}.jpg"

    def make(self, source: Path, sha256: str, size: int) -> bytes | None:
        """A JPEG of `source` fitting size x size, cached; None when the file no longer holds that content."""
        data = read_limited(source, self.max_bytes)
        if hashlib.sha256(data).hexdigest() != sha256:
            return None  # changed since it was indexed: the next scan re-tags it
        jpeg = render(data, size, self.max_pixels)
        target = self.cached(sha256, size)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, jpeg)
        except OSError as exc:  # a read-only place still gets thumbnails, just not cached ones
            log.warning("thumbnail not cached in %s: %s", target.parent, exc.strerror or exc)
        return jpeg


def render(data: bytes, size: int, max_pixels: int) -> bytes:
    """An upright RGB JPEG no larger than size x size; raises DecodeError for what is not an image."""
    picture = decode_bytes(data, max_pixels, draft=size).image
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85, optimize=True, progressive=True)
    return out.getvalue()
