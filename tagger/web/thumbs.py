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
# Grid tiles, by their short side: a tile is cropped square (object-fit: cover), so its short side
# is what must be sharp. 256 covers a desktop tile (180-250 CSS px) at one device pixel per CSS
# pixel; 720 covers a phone's 3-column tile (120 CSS px) at 3 and a desktop tile at 2-3.
TILE_SIZES = (256, 720)
MAX_TILE_ASPECT = 4  # a panorama's tile keeps at most 4 short sides of its length (the rest is cropped away anyway)


class Thumbnails:
    def __init__(self, folder: Path, max_pixels: int, max_bytes: int) -> None:
        self.folder = folder
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def cached(self, sha256: str, size: int, at_ms: int | None = None, tile: bool = False) -> Path:
        moment = "" if at_ms is None else f"-t{at_ms}"
        kind = "s" if tile else ""
        return self.folder / sha256[:2] / f"{sha256}-{kind}{size}{moment}.jpg"

    def make(self, source: Path, sha256: str, size: int, at_ms: int | None = None, tile: bool = False) -> bytes | None:
        """A JPEG of `source` fitting size x size (a `tile`: its short side `size`), cached; None when
        the file no longer holds that content.

        A clip's picture is its keyframe at `at_ms` milliseconds (the poster: its best tag's frame)."""
        if is_video_name(source):
            fh, size_on_disk = open_regular(source)
            with fh:
                if sampled_sha256(fh, size_on_disk) != sha256:
                    return None
                fh.seek(0)
                jpeg = _jpeg(frame_at(fh, (at_ms or 0) / 1000, self.max_pixels), size, tile)
        else:
            data = read_limited(source, self.max_bytes)
            if hashlib.sha256(data).hexdigest() != sha256:
                return None  # changed since it was indexed: the next scan re-tags it
            jpeg = render(data, size, self.max_pixels, tile)
        target = self.cached(sha256, size, at_ms, tile)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, jpeg)
        except OSError as exc:  # a read-only place still gets thumbnails, just not cached ones
            log.warning("thumbnail not cached in %s: %s", target.parent, exc.strerror or exc)
        return jpeg


def render(data: bytes, size: int, max_pixels: int, tile: bool = False) -> bytes:
    """An upright RGB JPEG no larger than size x size (a `tile`: short side `size`, or the
    picture's own when smaller); raises DecodeError for what is not an image."""
    return _jpeg(decode_bytes(data, max_pixels, draft=size).image, size, tile)


def _jpeg(picture: Image.Image, size: int, tile: bool = False) -> bytes:
    if tile:
        picture = _tile_crop(picture)
        short = min(picture.size)
        if short > size:
            scale = size / short
            picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                     Image.Resampling.LANCZOS, reducing_gap=3.0)
    else:
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85, optimize=True, progressive=True)
    return out.getvalue()


def _tile_crop(picture: Image.Image) -> Image.Image:
    """A panorama's middle, at most MAX_TILE_ASPECT times as long as it is high (or wide)."""
    w, h = picture.size
    if w > MAX_TILE_ASPECT * h:
        keep = MAX_TILE_ASPECT * h
        return picture.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
    if h > MAX_TILE_ASPECT * w:
        keep = MAX_TILE_ASPECT * w
        return picture.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
    return picture
