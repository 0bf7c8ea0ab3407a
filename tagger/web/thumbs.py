"""Thumbnails and screen-sized previews: made once, upright, cached on disk by content.

The cache key is the content's sha256 and the size, so a renamed or copied photo reuses
its thumbnail and an edited one gets a new one. JPEGs are decoded at a reduced scale
(draft): a 12-megapixel photo becomes a thumbnail in tens of milliseconds. A clip's picture is
one keyframe (tagger.engine.video.frame_at): its poster, or the frame behind one of its tags.
"""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

from PIL import Image

from tagger.engine.decode import decode_bytes
from tagger.engine.video import frame_at, sampled_sha256
from tagger.fileio import is_video_name, open_regular, read_limited, write_atomic

log = logging.getLogger(__name__)

PREVIEW_SIZE = 1600  # the image page's picture: screen-sized, not the 12-megapixel original


class Thumbnails:
    def __init__(self, folder: Path, max_pixels: int, max_bytes: int) -> None:
        self.folder = folder
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def cached(self, sha256: str, size: int, at_ms: int | None = None) -> Path:
        moment = "" if at_ms is None else f"-t{at_ms}"
        return self.folder / sha256[:2] / f"{sha256}-{size}{moment}.jpg"

    def make(self, source: Path, sha256: str, size: int, at_ms: int | None = None) -> bytes | None:
        """A JPEG of `source` fitting size x size, cached; None when the file no longer holds that content.

        A clip's picture is its keyframe at `at_ms` milliseconds (the poster: its best tag's frame)."""
        if is_video_name(source):
            fh, size_on_disk = open_regular(source)
            with fh:
                if sampled_sha256(fh, size_on_disk) != sha256:
                    return None
                fh.seek(0)
                jpeg = _jpeg(frame_at(fh, (at_ms or 0) / 1000, self.max_pixels), size)
        else:
            data = read_limited(source, self.max_bytes)
            if hashlib.sha256(data).hexdigest() != sha256:
                return None  # changed since it was indexed: the next scan re-tags it
            jpeg = render(data, size, self.max_pixels)
        target = self.cached(sha256, size, at_ms)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, jpeg)
        except OSError as exc:  # a read-only place still gets thumbnails, just not cached ones
            log.warning("thumbnail not cached in %s: %s", target.parent, exc.strerror or exc)
        return jpeg


def render(data: bytes, size: int, max_pixels: int) -> bytes:
    """An upright RGB JPEG no larger than size x size; raises DecodeError for what is not an image."""
    return _jpeg(decode_bytes(data, max_pixels, draft=size).image, size)


def _jpeg(picture: Image.Image, size: int) -> bytes:
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85, optimize=True, progressive=True)
    return out.getvalue()
