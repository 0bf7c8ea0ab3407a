"""Make real DNG raw files from ordinary photos, for the tests of RAW support.

No camera raw files can be downloaded (the tests run offline, the shipped sample photos are PNG and
JPEG), so this writes genuine DNGs instead: the RGGB Bayer mosaic a sensor would have recorded of a
photo, with the DNG tags LibRaw (rawpy) needs to demosaic it back into the same picture, optionally an
embedded full-size preview JPEG (what a fast RAW path reads instead of demosaicing) and an Orientation.

Needs numpy, Pillow, tifffile and imagecodecs (tifffile looks up its JPEG codec even when it is handed
the preview already compressed by Pillow); reading the files back needs rawpy.
Usage: python scripts/sample_raw.py OUT_DIR
"""
from __future__ import annotations

import argparse
import importlib
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile
from PIL import Image

# A tifffile extra tag: (code, TIFF data type, count, value, write once).
Tag = tuple[int, str, int, Any, bool]

# XYZ (D65) -> linear sRGB. As ColorMatrix1 (XYZ -> camera) it says "the camera's RGB is linear sRGB",
# so LibRaw's camera -> sRGB matrix comes out as the identity and colours pass through unchanged.
XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))


def _linear_lut() -> npt.NDArray[np.uint16]:
    """8-bit level -> 16-bit linear light: the inverse of LibRaw's default output curve (BT.709,
    power 0.45 with a 4.5 slope toe), so that postprocess() gives back the original levels."""
    v = np.arange(256, dtype=np.float64) / 255
    linear = np.where(v < 0.081, v / 4.5, ((v + 0.099) / 1.099) ** (1 / 0.45))
    return np.round(linear * 65535).astype(np.uint16)


_LINEAR = _linear_lut()


def bayer_rggb(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint16]:
    """RGGB mosaic of the linearised pixels: one colour per site, as behind a Bayer filter."""
    linear = _LINEAR[rgb]
    cfa = np.ascontiguousarray(linear[..., 1])
    cfa[0::2, 0::2] = linear[0::2, 0::2, 0]
    cfa[1::2, 1::2] = linear[1::2, 1::2, 2]
    return cfa


def _rationals(values: tuple[float, ...]) -> list[int]:
    """Flat numerator, denominator pairs, as tifffile takes (S)RATIONAL tag values."""
    return [n for v in values for n in (round(v * 10000), 10000)]


def make_dng(rgb: npt.NDArray[np.uint8], path: Path, *, preview: bool, orientation: int = 1) -> Path:
    """Write `rgb` (H x W x 3 uint8) to `path` as a DNG whose raw image is its Bayer mosaic.

    An odd last row or column is dropped (the 2x2 pattern must tile the image). With `preview`, IFD0 is
    a full-size baseline JPEG of the pixels (NewSubfileType 1) and the raw sits in its SubIFD
    (NewSubfileType 0), the usual DNG layout; without it, IFD0 is the raw and the file has no preview.
    `orientation` is the TIFF Orientation of IFD0 (1 upright, 3 = 180, 6 = 90 CW, 8 = 90 CCW to view):
    the mosaic and the preview hold the pixels as given, unturned, like a camera's.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"need an H x W x 3 uint8 array, got {rgb.shape} {rgb.dtype}")
    if not 1 <= orientation <= 8:
        raise ValueError(f"TIFF orientation must be 1..8, got {orientation}")
    height, width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    if not height or not width:
        raise ValueError(f"image too small for a 2x2 Bayer pattern: {rgb.shape}")
    rgb = np.ascontiguousarray(rgb[:height, :width])
    matrix = tuple(v for row in XYZ_TO_SRGB for v in row)
    main_tags: list[Tag] = [
        (271, "s", 0, "Tagger", True),  # Make
        (272, "s", 0, "Synthetic Bayer", True),  # Model
        (274, "H", 1, orientation, True),  # Orientation
        (50706, "B", 4, bytes((1, 4, 0, 0)), True),  # DNGVersion
        (50707, "B", 4, bytes((1, 1, 0, 0)), True),  # DNGBackwardVersion
        (50708, "s", 0, "Tagger Synthetic Bayer", True),  # UniqueCameraModel
        (50721, "2i", 9, _rationals(matrix), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, _rationals((1.0, 1.0, 1.0)), True),  # AsShotNeutral
    ]
    raw_tags: list[Tag] = [
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, bytes((0, 1, 1, 2)), True),  # CFAPattern: R G / G B
        (50713, "H", 2, (1, 1), True),  # BlackLevelRepeatDim
        (50714, "H", 1, 0, True),  # BlackLevel
        (50717, "I", 1, 65535, True),  # WhiteLevel
    ]
    with tifffile.TiffWriter(path) as tif:
        if preview:
            jpeg = io.BytesIO()
            Image.fromarray(rgb).save(jpeg, "JPEG", quality=90, subsampling=2)  # 4:2:0, as tagged below
            # One strip holding the whole JPEG: LibRaw hands that strip out as the thumbnail.
            tif.write(iter([jpeg.getvalue()]), shape=(height, width, 3), dtype=np.uint8, photometric="ycbcr",
                      compression="jpeg", subsampling=(2, 2), rowsperstrip=height, subfiletype=1, subifds=1,
                      metadata=None, software=False, extratags=main_tags)
            main_tags = []
        tif.write(bayer_rggb(rgb), photometric="cfa", subfiletype=0, metadata=None, software=False,
                  extratags=main_tags + raw_tags)
    return path


def make_truncated_raw(path: Path, source: Path, keep: float = 0.3) -> Path:
    """Write the first `keep` share of `source`'s bytes to `path`: a damaged RAW, for the error paths."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def main(argv: list[str] | None = None) -> int:
    """Write NAME.dng and NAME-nopreview.dng for every sample photo into OUT_DIR."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir
    sys.path.insert(0, str(Path(__file__).parent))
    # Imported by name so that mypy checks this file alone, not sample_photos.py with it.
    sources: dict[str, Path] = importlib.import_module("sample_photos").sample_sources()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        with Image.open(src) as img:
            rgb = np.asarray(img.convert("RGB"))
        for preview, suffix in ((True, ""), (False, "-nopreview")):
            written = make_dng(rgb, out_dir / f"{name}{suffix}.dng", preview=preview)
            print(f"wrote {written} ({written.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
