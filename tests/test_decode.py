"""Decoding every format to correct RGB, refusing bad files with a reason, and preprocessing
as torchvision does (to one 8-bit step on a few values); on images written in tmp_path and scikit-image's real photos."""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tagger.config import DecodeConfig
from tagger.engine.decode import (
    HEIF_SUPPORTED,
    DecodedImage,
    decode_bytes,
    open_rgb,
    preprocess,
    read_bytes,
)
from tagger.errors import DecodeError
from tagger.fileio import is_image_name
from tagger.engine.weights import IMAGENET_PREPROCESS, LITE_PREPROCESS, Preprocess

LIMIT = 100_000_000
RED, GREEN, BLUE, YELLOW, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 255, 255)
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left")


# --- helpers -------------------------------------------------------------------------------------


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """Red | green over blue | yellow: any flip, rotation or channel swap shows."""
    a = np.zeros((height, width, 3), np.uint8)
    a[: height // 2, : width // 2] = RED
    a[: height // 2, width // 2 :] = GREEN
    a[height // 2 :, : width // 2] = BLUE
    a[height // 2 :, width // 2 :] = YELLOW
    return Image.fromarray(a)


def quadrant_colours(img: Image.Image) -> list[tuple[int, ...]]:
    """The colour at the centre of each quadrant: top-left, top-right, bottom-left, bottom-right."""
    w, h = img.size
    return [img.getpixel((x, y)) for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)]  # type: ignore[misc]


def assert_colours(got: list[tuple[int, ...]], want: list[tuple[int, int, int]], tol: int) -> None:
    np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), atol=tol, err_msg=f"{got} != {want}")


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def pixels(decoded: DecodedImage) -> np.ndarray:
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (decoded.width, decoded.height)
    return np.asarray(decoded.image)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG of any declared size, built without holding its pixels.

    20000x20000 compresses to ~50 KB: the shape of a decompression bomb.
    """
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    block = row * 500
    idat = b"".join([comp.compress(block) for _ in range(height // 500)])
    idat += comp.compress(row * (height % 500)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def raw_exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian EXIF block with one IFD of (tag, type, count, 4-byte value) entries."""
    out = b"Exif\0\0II*\0" + struct.pack("<IH", 8, len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHI", tag, kind, count) + value
    return out + struct.pack("<I", 0)


@pytest.fixture(scope="module")
def photos(sample_paths: dict[str, Path]) -> dict[str, Image.Image]:
    """scikit-image's real photos, as RGB."""
    out = {}
    for name in PHOTOS:
        with Image.open(sample_paths[name]) as img:
            out[name] = img.convert("RGB")
    return out


# --- 1. every format ------------------------------------------------------------------------------

# format, extension, save parameters, colour tolerance (0 = lossless)
FORMATS = [
    pytest.param("JPEG", ".jpg", {"quality": 95}, 12, id="jpeg"),
    pytest.param("PNG", ".png", {}, 0, id="png"),
    pytest.param("GIF", ".gif", {}, 0, id="gif"),
    pytest.param("BMP", ".bmp", {}, 0, id="bmp"),
    pytest.param("TIFF", ".tif", {}, 0, id="tiff"),
    pytest.param("TIFF", ".tiff", {"compression": "tiff_deflate"}, 0, id="tiff-deflate"),
    pytest.param("WEBP", ".webp", {"quality": 95}, 12, id="webp-lossy"),
    pytest.param("WEBP", ".webp", {"lossless": True}, 0, id="webp-lossless"),
]


@pytest.mark.parametrize(("fmt", "ext", "params", "tol"), FORMATS)
def test_each_format_decodes_to_rgb_of_right_size_and_colours(
    tmp_path: Path, fmt: str, ext: str, params: dict[str, object], tol: int
) -> None:
    path = write(tmp_path / f"q{ext}", encode(quadrants(64, 48), fmt, **params))
    assert is_image_name(path)
    decoded = open_rgb(path, LIMIT)
    pixels(decoded)
    assert (decoded.width, decoded.height, decoded.format) == (64, 48, fmt)
    assert_colours(quadrant_colours(decoded.image), [RED, GREEN, BLUE, YELLOW], tol)


def heic_encoder_or_skip() -> None:
    """HEIC needs libheif's HEVC encoder to write the test file; decoding needs only the decoder."""
    assert HEIF_SUPPORTED, "pillow_heif is installed but tagger.engine.decode did not register it"
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip(f"pillow_heif {pillow_heif.__version__} was built without a HEVC encoder: cannot write a .heic")


def test_heic_decodes_to_rgb_of_right_size_and_colours(tmp_path: Path) -> None:
    heic_encoder_or_skip()
    path = tmp_path / "q.heic"
    quadrants(64, 48).save(path, format="HEIF", quality=95)
    assert path.read_bytes()[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1")  # really HEIF, not a renamed PNG
    decoded = open_rgb(path, LIMIT)
    pixels(decoded)
    assert (decoded.width, decoded.height, decoded.format) == (64, 48, "HEIF")
    assert_colours(quadrant_colours(decoded.image), [RED, GREEN, BLUE, YELLOW], 16)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        pytest.param("GIF", {"duration": 100, "loop": 0}, id="gif"),
        pytest.param("WEBP", {"duration": 100, "lossless": True}, id="webp"),
        pytest.param("TIFF", {}, id="tiff-multipage"),
    ],
)
def test_first_frame_of_a_multi_frame_file(fmt: str, params: dict[str, object]) -> None:
    """The frames differ in colour: the first one must come back, not the last or a blend."""
    frames = [Image.new("RGB", (40, 30), colour) for colour in (GREEN, RED, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    with Image.open(io.BytesIO(data)) as img:
        assert getattr(img, "n_frames", 1) == 3  # the file really is animated
    decoded = decode_bytes(data, LIMIT)
    assert (decoded.width, decoded.height) == (40, 30)
    assert np.all(pixels(decoded) == GREEN)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})],
    ids=["png", "bmp", "tiff", "webp"],
)
def test_real_photo_round_trips_exactly_through_lossless_formats(
    photos: dict[str, Image.Image], fmt: str, params: dict[str, object]
) -> None:
    photo = photos["chelsea"]
    decoded = decode_bytes(encode(photo, fmt, **params), LIMIT)
    np.testing.assert_array_equal(pixels(decoded), np.asarray(photo))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "HEIF"])
def test_real_photo_survives_lossy_formats(photos: dict[str, Image.Image], fmt: str) -> None:
    """Lossy codecs are close, but a channel swap or a wrong colour matrix would be far off."""
    if fmt == "HEIF":
        heic_encoder_or_skip()
    photo = photos["coffee"]
    got = pixels(decode_bytes(encode(photo, fmt, quality=95), LIMIT)).astype(float)
    assert got.shape == np.asarray(photo).shape
    assert np.abs(got - np.asarray(photo, float)).mean() < 4


# --- 2. EXIF orientation --------------------------------------------------------------------------

# EXIF Orientation -> how the stored pixels are shown, written independently with numpy.
ORIENTED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, k=-1),  # camera held rotated: turn 90 degrees clockwise to view
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, k=1),  # turn 90 degrees anticlockwise to view
}


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_applied_to_png_exactly(orientation: int) -> None:
    stored = quadrants(60, 40)
    decoded = decode_bytes(encode(stored, "PNG", exif=exif_orientation(orientation)), LIMIT)
    np.testing.assert_array_equal(pixels(decoded), ORIENTED[orientation](np.asarray(stored)))


@pytest.mark.parametrize(
    ("orientation", "size", "top", "bottom", "left", "right"),
    [
        # The stored 60x40 image is red on the left, blue on the right.
        (1, (60, 40), None, None, RED, BLUE),
        (3, (60, 40), None, None, BLUE, RED),
        (6, (40, 60), RED, BLUE, None, None),  # 90 clockwise: the left edge becomes the top
        (8, (40, 60), BLUE, RED, None, None),
    ],
)
def test_exif_orientation_applied_to_jpeg(
    tmp_path: Path,
    orientation: int,
    size: tuple[int, int],
    top: tuple[int, int, int] | None,
    bottom: tuple[int, int, int] | None,
    left: tuple[int, int, int] | None,
    right: tuple[int, int, int] | None,
) -> None:
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30], a[:, 30:] = RED, BLUE
    path = tmp_path / "split.jpg"
    Image.fromarray(a).save(path, "JPEG", quality=95, exif=exif_orientation(orientation))
    decoded = open_rgb(path, LIMIT)
    shown = pixels(decoded).astype(int)
    assert (decoded.width, decoded.height) == size
    w, h = size
    if top is not None and bottom is not None:
        np.testing.assert_allclose(shown[h // 4, w // 2], top, atol=12)
        np.testing.assert_allclose(shown[3 * h // 4, w // 2], bottom, atol=12)
    if left is not None and right is not None:
        np.testing.assert_allclose(shown[h // 2, w // 4], left, atol=12)
        np.testing.assert_allclose(shown[h // 2, 3 * w // 4], right, atol=12)


def test_heic_orientation_applied_once(tmp_path: Path) -> None:
    """libheif rotates HEIC itself: applying the EXIF tag again would turn it twice."""
    heic_encoder_or_skip()
    path = tmp_path / "turned.heic"
    quadrants(64, 48).save(path, format="HEIF", quality=95, exif=exif_orientation(6).tobytes())
    decoded = open_rgb(path, LIMIT)
    assert (decoded.width, decoded.height) == (48, 64)
    assert_colours(quadrant_colours(decoded.image), [BLUE, RED, YELLOW, GREEN], 16)


@pytest.mark.parametrize(
    "bad_tag",
    [
        (0x0128, 2, 4, b"abc\0"),  # ResolutionUnit stored as text: Pillow's EXIF rewrite raised struct.error
        (0x0110, 5, 1, struct.pack("<I", 8)),  # Model stored as a rational: raised AttributeError
        (0x011A, 2, 4, b"abc\0"),  # XResolution stored as text: raised TypeError, and the turn was dropped
    ],
    ids=["struct-error", "attribute-error", "type-error"],
)
def test_malformed_exif_tag_keeps_image_and_orientation(bad_tag: tuple[int, int, int, bytes]) -> None:
    """Cameras and editors write odd tags; one must not lose the photo or its rotation."""
    exif = raw_exif([(0x0112, 3, 1, struct.pack("<HH", 6, 0)), bad_tag])
    decoded = decode_bytes(encode(quadrants(64, 48), "JPEG", quality=95, exif=exif), LIMIT)
    assert (decoded.width, decoded.height) == (48, 64)
    assert_colours(quadrant_colours(decoded.image), [BLUE, RED, YELLOW, GREEN], 12)


# --- 3. colour modes ------------------------------------------------------------------------------


def palette_image() -> Image.Image:
    img = Image.new("P", (3, 1))
    img.putpalette([*RED, *GREEN, *BLUE] + [0] * (256 - 3) * 3)
    img.putdata([0, 1, 2])
    return img


def row(data: bytes) -> list[tuple[int, ...]]:
    return [tuple(p) for p in pixels(decode_bytes(data, LIMIT))[0].tolist()]


def test_palette_without_transparency() -> None:
    assert row(encode(palette_image(), "PNG")) == [RED, GREEN, BLUE]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_becomes_white(fmt: str) -> None:
    """Index 1 (green) is transparent: it shows as white, the others keep their colour."""
    data = encode(palette_image(), fmt, transparency=1)
    with Image.open(io.BytesIO(data)) as img:
        assert (img.mode, img.info.get("transparency")) == ("P", 1)
    assert row(data) == [RED, WHITE, BLUE]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_rgba_transparent_is_white_opaque_keeps_colour(fmt: str) -> None:
    rgba = np.array([[[200, 30, 40, 255], [10, 250, 10, 0], [0, 0, 255, 128]]], np.uint8)
    got = row(encode(Image.fromarray(rgba, "RGBA"), fmt))
    assert got[0] == (200, 30, 40)
    assert got[1] == WHITE
    np.testing.assert_allclose(got[2], (127, 127, 255), atol=1)  # half blue over white


def test_la_transparent_is_white_opaque_keeps_grey() -> None:
    la = np.array([[[50, 255], [0, 0], [100, 128]]], np.uint8)
    got = row(encode(Image.fromarray(la, "LA"), "PNG"))
    assert got[:2] == [(50, 50, 50), WHITE]
    np.testing.assert_allclose(got[2], (178, 178, 178), atol=1)


@pytest.mark.parametrize(
    ("mode", "key", "values", "want"),
    [
        ("L", 77, [0, 77, 255], [(0, 0, 0), WHITE, (255, 255, 255)]),
        ("RGB", GREEN, [RED, GREEN, BLUE], [RED, WHITE, BLUE]),
    ],
)
def test_colour_keyed_png_transparent_is_white(
    mode: str, key: object, values: list[object], want: list[tuple[int, int, int]]
) -> None:
    """A PNG tRNS colour key marks one grey level or colour transparent, like a palette index."""
    img = Image.new(mode, (3, 1))
    img.putdata(values)  # type: ignore[arg-type]
    assert row(encode(img, "PNG", transparency=key)) == want


def test_greyscale_8_bit() -> None:
    grey = np.array([[0, 1, 77, 128, 254, 255]], np.uint8)
    got = pixels(decode_bytes(encode(Image.fromarray(grey, "L"), "PNG"), LIMIT))
    for channel in range(3):
        np.testing.assert_array_equal(got[..., channel], grey)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_one_bit(fmt: str) -> None:
    img = Image.fromarray(np.array([[True, False, True, False]]))
    assert img.mode == "1"
    assert row(encode(img, fmt)) == [WHITE, (0, 0, 0), WHITE, (0, 0, 0)]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_greyscale_16_bit_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([[65535, 32768, 256, 0]], np.uint16)
    data = encode(Image.fromarray(values), fmt)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode in ("I;16", "I;16B", "I")  # a real 16-bit file
    got = [p[0] for p in row(data)]
    assert got[0] == 255
    assert abs(got[1] - 128) <= 1
    assert got[2:] == [1, 0]


def test_dark_16_bit_image_is_not_mistaken_for_8_bit() -> None:
    """All values <= 255 in a 16-bit file are near black; the range must come from the bit depth."""
    values = np.array([[255, 200, 128, 0]], np.uint16)
    got = [p[0] for p in row(encode(Image.fromarray(values), "PNG"))]
    assert got == [1, 1, 0, 0]


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(fmt: str) -> None:
    cmyk = [(0, 255, 255, 0), (255, 0, 255, 0), (255, 255, 0, 0), (0, 0, 0, 0), (0, 0, 0, 255)]
    want = [RED, GREEN, BLUE, WHITE, (0, 0, 0)]
    strip = Image.new("CMYK", (16 * len(cmyk), 16))
    for i, colour in enumerate(cmyk):
        strip.paste(colour, (16 * i, 0, 16 * (i + 1), 16))
    data = encode(strip, fmt, quality=95) if fmt == "JPEG" else encode(strip, fmt)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "CMYK"
    got = pixels(decode_bytes(data, LIMIT)).astype(int)
    for i, colour in enumerate(want):
        np.testing.assert_allclose(got[8, 16 * i + 8], colour, atol=12 if fmt == "JPEG" else 0)


# --- 4. refusals ----------------------------------------------------------------------------------


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    path = write(tmp_path / "bomb.png", blank_png(20000, 20000))
    assert path.stat().st_size < 200_000  # 400 million pixels in a small file
    with pytest.raises(DecodeError, match=r"too large.*20000x20000"):
        open_rgb(path, max_pixels=20000 * 20000 - 1)


def test_size_is_checked_from_the_header_before_any_pixel_is_read() -> None:
    """The IDAT is cut off: decoding first would say 'truncated', not 'too large'."""
    data = blank_png(20000, 20000)
    with pytest.raises(DecodeError, match="too large"):
        decode_bytes(data[:100], max_pixels=1_000_000)


def test_over_default_limit_refused(tmp_path: Path) -> None:
    assert DecodeConfig().max_pixels == LIMIT
    path = write(tmp_path / "big.png", blank_png(10001, 10000))  # 100,010,000 pixels
    with pytest.raises(DecodeError, match="too large"):
        open_rgb(path, DecodeConfig().max_pixels)


def test_limit_is_inclusive() -> None:
    """The same file decodes at exactly its pixel count: the refusal is the limit, not the file."""
    data = blank_png(300, 200)
    decoded = decode_bytes(data, max_pixels=300 * 200)
    assert (decoded.width, decoded.height) == (300, 200)
    assert not pixels(decoded).any()
    with pytest.raises(DecodeError, match="too large"):
        decode_bytes(data, max_pixels=300 * 200 - 1)


@pytest.mark.parametrize(("fmt", "ext"), [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_file_refused(tmp_path: Path, photos: dict[str, Image.Image], fmt: str, ext: str) -> None:
    data = encode(photos["chelsea"], fmt)
    path = write(tmp_path / f"cut{ext}", data[: len(data) // 2])
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        open_rgb(path, LIMIT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "HEIF"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_any_cut_of_any_format_raises_only_decode_error(photos: dict[str, Image.Image], fmt: str, keep: float) -> None:
    """Whatever Pillow or a plugin raises inside, the caller sees DecodeError and a reason."""
    if fmt == "HEIF":
        heic_encoder_or_skip()
    data = encode(photos["astronaut"].resize((128, 96)), fmt)
    with pytest.raises(DecodeError, match="truncated|corrupt|not an image"):
        decode_bytes(data[: int(len(data) * keep)], LIMIT)


def test_zero_byte_file_refused(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="empty"):
        open_rgb(write(tmp_path / "empty.jpg", b""), LIMIT)


def test_text_file_named_jpg_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: milk, eggs\n" * 20, encoding="utf-8")
    with pytest.raises(DecodeError, match="not an image"):
        open_rgb(path, LIMIT)


def test_random_bytes_named_png_refused(tmp_path: Path) -> None:
    data = np.random.default_rng(7).bytes(4096)
    assert not data.startswith(b"\x89PNG")
    with pytest.raises(DecodeError, match="not an image"):
        open_rgb(write(tmp_path / "noise.png", data), LIMIT)


def test_folder_refused(tmp_path: Path) -> None:
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    with pytest.raises(DecodeError, match="folder"):
        read_bytes(folder)
    with pytest.raises(DecodeError, match="folder"):
        open_rgb(folder, LIMIT)


def test_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="cannot read"):
        read_bytes(tmp_path / "gone.jpg")


# --- 5. preprocessing = torchvision ---------------------------------------------------------------

# The reference transforms written out here, not derived from the specs, so a wrong spec also fails.
REFERENCE = {
    "imagenet": (IMAGENET_PREPROCESS, T.InterpolationMode.BILINEAR, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "lite": (LITE_PREPROCESS, T.InterpolationMode.BICUBIC, (127 / 255,) * 3, (128 / 255,) * 3),
}
SIZES = [None, (50, 30), (30, 50), (451, 300), (300, 451), (257, 999), (1000, 257), (224, 224), (256, 256), (7, 3),
         (4000, 3000), (2250, 4000)]


def reference(img: Image.Image, which: str) -> np.ndarray:
    _, interpolation, mean, std = REFERENCE[which]
    transform = T.Compose(
        [T.Resize(256, interpolation=interpolation), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)]
    )
    out: torch.Tensor = transform(img)
    return out.numpy()


def check_preprocess(img: Image.Image, which: str) -> None:
    spec: Preprocess = REFERENCE[which][0]
    got = preprocess(img, spec)
    assert got.shape == (3, 224, 224)
    assert got.dtype == np.float32
    assert got.flags.c_contiguous
    expected = reference(img, which)
    std = np.asarray(REFERENCE[which][3], dtype=np.float32)[:, None, None]
    steps = np.abs(got - expected) * std * 255  # differences in 8-bit steps of the resized image
    assert steps.max() < 1.001, f"{which}: a value is {steps.max():.2f} steps off torchvision"
    assert np.count_nonzero(steps > 0.001) <= max(1, got.size // 1000), f"{which}: {np.count_nonzero(steps > 0.001)} values moved"
    print(f"{which} {img.size}: {np.count_nonzero(steps > 0.001)} of {got.size} values one step off")


@pytest.mark.parametrize("which", sorted(REFERENCE))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "native" if s is None else f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ["chelsea", "astronaut", "rocket"])
def test_preprocess_equals_torchvision(
    photos: dict[str, Image.Image], name: str, size: tuple[int, int] | None, which: str
) -> None:
    img = photos[name] if size is None else photos[name].resize(size, Image.Resampling.LANCZOS)
    check_preprocess(img, which)


@pytest.mark.parametrize("which", sorted(REFERENCE))
@pytest.mark.parametrize("name", PHOTOS)
def test_preprocess_of_decoded_jpeg_equals_torchvision(
    photos: dict[str, Image.Image], name: str, which: str
) -> None:
    """The path the scanner takes: a file's bytes -> decode_bytes -> preprocess."""
    decoded = decode_bytes(encode(photos[name], "JPEG", quality=90), LIMIT)
    check_preprocess(decoded.image, which)


def test_preprocess_is_not_trivially_equal(photos: dict[str, Image.Image]) -> None:
    """Guard for the comparison itself: the two specs and a shifted crop give different arrays."""
    img = photos["chelsea"]
    imagenet, lite = preprocess(img, IMAGENET_PREPROCESS), preprocess(img, LITE_PREPROCESS)
    assert np.abs(imagenet - lite).max() > 0.1
    shifted = reference(img.crop((1, 0, img.width, img.height)), "imagenet")
    assert np.abs(imagenet - shifted).max() > 1e-3
