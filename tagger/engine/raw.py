"""RAW camera files (DNG, CR2, CR3, NEF, ARW, ORF, RW2, RAF, PEF, SRW...) through LibRaw (rawpy).

Most RAWs carry the camera's own JPEG preview, often full size: where its short side is at least
what the model needs, that JPEG is decoded (by the fast JPEG path, at draft scale) and a RAW costs
about what a JPEG costs. Otherwise the sensor data is demosaiced at half size: a quarter of the
pixels, each made from one 2 x 2 block, no interpolation. Either way the RAW's orientation applies.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tagger.errors import DecodeError

# LibRaw's `flip` -> the EXIF orientation that turns the picture the same way.
_FLIP_TO_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}
# What a RAW's first bytes look like: TIFF-based (DNG, CR2, NEF, ARW, PEF, SRW...), Olympus, Panasonic,
# Fujifilm; Canon's CR3 is an ISO media file ("ftypcrx ").
_MAGIC = (b"II*\x00", b"MM\x00*", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00", b"FUJIFILMCCD-RAW")


@dataclass(frozen=True)
class RawPicture:
    """A RAW opened: the preview JPEG to decode, or the demosaiced pixels; the full picture's size."""

    preview: bytes | None  # the camera's JPEG, big enough for the model
    pixels: np.ndarray | None  # else: H x W x 3 uint8, half size, already upright
    orientation: int  # EXIF-style, for the preview (1: upright)
    width: int  # the whole picture, upright
    height: int


def might_be_raw(data: bytes) -> bool:
    """Cheap: whether LibRaw should be asked first (a plain TIFF is asked too, and declines)."""
    return data.startswith(_MAGIC) or data[4:12] == b"ftypcrx "


def open_raw(data: bytes, max_pixels: int, min_side: int) -> RawPicture | None:
    """The picture in a RAW file; None where LibRaw does not take it for a RAW (Pillow's turn).

    Refused with a reason (DecodeError): a sensor or preview over `max_pixels`, a truncated or
    corrupt file. `min_side`: the least short side of a preview worth using instead of the sensor.
    """
    try:
        import rawpy
    except ImportError:  # optional: without it a RAW is refused by Pillow, with a reason
        return None
    raw = rawpy.RawPy()
    try:
        try:
            raw.open_buffer(io.BytesIO(data))
        except rawpy.LibRawFileUnsupportedError:
            return None
        sizes = raw.sizes
        if sizes.raw_width * sizes.raw_height > max_pixels:
            raise DecodeError(
                f"RAW too large: its sensor claims {sizes.raw_width}x{sizes.raw_height} pixels, over the limit "
                f"of {max_pixels:,} (decode.max_pixels)"
            )
        turned = sizes.flip in (5, 6)
        width, height = (sizes.height, sizes.width) if turned else (sizes.width, sizes.height)
        orientation = _FLIP_TO_ORIENTATION.get(sizes.flip, 1)
        found = _preview(raw, max_pixels, min_side)
        if found is not None:
            preview, turned_itself = found  # a preview with its own EXIF orientation is turned by it
            return RawPicture(preview, None, 1 if turned_itself else orientation, width, height)
        raw.unpack()
        pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        return RawPicture(None, np.ascontiguousarray(pixels), 1, width, height)
    except rawpy.LibRawError as exc:
        raise DecodeError(f"corrupt or truncated RAW file: {type(exc).__name__}: {exc}") from None
    finally:
        raw.close()


def _preview(raw: object, max_pixels: int, min_side: int) -> tuple[bytes, bool] | None:
    """The embedded JPEG when its short side is at least `min_side`, and whether it carries its own
    EXIF orientation; None to demosaic instead."""
    import rawpy

    assert isinstance(raw, rawpy.RawPy)
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG or not isinstance(thumb.data, bytes):
        return None  # a small bitmap thumbnail: the sensor gives more
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(thumb.data)) as img:  # the header only: nothing decoded yet
                width, height = img.size
                own_orientation = img.getexif().get(0x0112, 1) not in (1, None)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"RAW file with a broken preview JPEG: {exc}") from None
    if width * height > max_pixels:
        raise DecodeError(
            f"RAW preview claims {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(decode.max_pixels)"
        )
    return (thumb.data, own_orientation) if min(width, height) >= min_side else None
