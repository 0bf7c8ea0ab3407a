"""The fast JPEG path (tagger.engine.fastjpeg) gives the model exactly Pillow's pixels, or steps aside.

Near ties flip on one 8-bit step, so "close" is not enough: every comparison here is bit for bit,
against Pillow doing the same work, on random images, real photos and JPEG variants.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tagger.engine import decode

from tagger.engine import fastjpeg
from tagger.cpu import cpu_info
from tagger.errors import DecodeError
from tagger.engine.weights import IMAGENET_PREPROCESS, LITE_PREPROCESS, Preprocess

LITE0, RESNET = LITE_PREPROCESS, IMAGENET_PREPROCESS


def test_the_fast_path_is_built() -> None:
    """CI installs with a C compiler: the extension and simplejpeg must be there, not silently absent."""
    import tagger.engine._resample as resample

    assert fastjpeg.AVAILABLE
    print(f"CPU seen: {cpu_info().describe()}; resize SIMD path: {resample.simd()}")


@pytest.mark.parametrize("simd", [0, -1], ids=["plain-c", "simd-if-any"])
def test_resize_is_pillows_bit_for_bit(simd: int) -> None:
    import tagger.engine._resample as resample

    rng = np.random.default_rng(7)
    compared = 0
    for _ in range(600):
        w, h = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        ow, oh = int(rng.integers(1, 260)), int(rng.integers(1, 260))
        if decode._vertical_first((w, h), (ow, oh)):
            continue  # Pillow's other pass order: tagger.engine.decode never sends these here
        x0, y0 = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
        box = (x0, y0, float(rng.uniform(x0 + 0.01, w)), float(rng.uniform(y0 + 0.01, h)))
        if rng.random() < 0.25:
            box = (0.0, 0.0, float(w), float(h))
        bicubic = bool(rng.integers(0, 2))
        # Noise (every weight matters) or smooth values (the sums near the clipping edges).
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if rng.random() < 0.5 else \
            np.clip(rng.normal(128, 90, (h, w, 3)), 0, 255).astype(np.uint8)
        want = np.asarray(Image.fromarray(rgb).resize(
            (ow, oh), Image.Resampling.BICUBIC if bicubic else Image.Resampling.BILINEAR, box=box))
        rgbx = np.concatenate([rgb, np.full((h, w, 1), 77, np.uint8)], axis=2)
        got = np.frombuffer(resample.resize_rgbx(rgbx, w, h, box, ow, oh, int(bicubic), simd), np.uint8)
        assert np.array_equal(got.reshape(oh, ow, 3), want), (w, h, ow, oh, box, bicubic)
        compared += 1
    assert compared > 300


def test_resize_refuses_bad_arguments() -> None:
    import tagger.engine._resample as resample

    pixels = np.zeros((4, 4, 4), np.uint8)
    for args in [(pixels, 4, 5, (0, 0, 4, 4), 2, 2, 1), (pixels, 4, 4, (0, 0, 5, 4), 2, 2, 1),
                 (pixels, 4, 4, (2, 0, 1, 4), 2, 2, 1), (pixels, 4, 4, (0, 0, 4, 4), 0, 2, 1),
                 (pixels, 4, 4, (0, 0, 4, 4), 2, 2, 7)]:
        with pytest.raises(ValueError):
            resample.resize_rgbx(*args)


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Records each fast decode attempt: True where it gave the pixels, False where it stepped aside."""
    seen: list[bool] = []
    real = fastjpeg.decode_rgbx

    def spy(*args: object, **kwargs: object) -> np.ndarray | None:
        pixels = real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(pixels is not None)
        return pixels

    monkeypatch.setattr(fastjpeg, "decode_rgbx", spy)
    yield seen


def both_ways(monkeypatch: pytest.MonkeyPatch, data: bytes, spec: Preprocess, draft: int | None,
              scratch: fastjpeg.Scratch | None = None) -> tuple[decode.DecodedArray, decode.DecodedArray]:
    fast = decode.decode_array(data, 10**9, spec, draft, scratch)
    with monkeypatch.context() as m:
        m.setattr(fastjpeg, "AVAILABLE", False)
        slow = decode.decode_array(data, 10**9, spec, draft)
    return fast, slow


def assert_same(fast: decode.DecodedArray, slow: decode.DecodedArray, what: str) -> None:
    assert (fast.width, fast.height, fast.reduced) == (slow.width, slow.height, slow.reduced), what
    assert fast.array.dtype == slow.array.dtype and np.array_equal(fast.array, slow.array), what


def test_real_photos_give_pillows_model_input(
    monkeypatch: pytest.MonkeyPatch, views: list[Path], sample_jpegs: list[Path], taken: list[bool]
) -> None:
    scratch = fastjpeg.Scratch()
    for path in [*sample_jpegs, *views[:40]]:
        data = path.read_bytes()
        for spec in (LITE0, RESNET):
            for draft in (None, 2 * spec.resize, spec.resize):
                fast, slow = both_ways(monkeypatch, data, spec, draft, scratch if draft is None else None)
                assert_same(fast, slow, f"{path.name} {spec.interpolation} draft={draft}")
    assert taken and all(taken)


def jpeg(size: tuple[int, int], seed: int = 0, mode: str = "RGB", **save: object) -> bytes:
    """A photo-like JPEG (smooth gradients and edges, so every scale differs) of the given kind."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w, 1)), (y * 255 // max(h, 1)), ((x + y) % 97) * 2], axis=2)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    out = io.BytesIO()
    img.save(out, "JPEG", **save)
    return out.getvalue()


def mpo(data: bytes) -> bytes:
    """The same picture as an MPO: a JPEG followed by a second picture (cameras write a large preview)."""
    out = io.BytesIO()
    preview = Image.new("RGB", (160, 120), (90, 140, 200))
    Image.open(io.BytesIO(data)).save(out, "MPO", save_all=True, append_images=[preview], quality=92)
    return out.getvalue()


def with_orientation(data: bytes, orientation: int) -> bytes:
    img = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif.tobytes(), quality=95, subsampling=0)
    return out.getvalue()


@pytest.mark.parametrize("draft", [None, 512, 256])
def test_jpeg_variants_give_pillows_model_input(monkeypatch: pytest.MonkeyPatch, taken: list[bool], draft: int | None) -> None:
    variants: dict[str, bytes] = {
        "4:2:0": jpeg((1203, 907), subsampling=2, quality=88),
        "4:2:2": jpeg((1203, 907), subsampling=1, quality=88),
        "4:4:4": jpeg((1203, 907), subsampling=0, quality=97),
        "progressive": jpeg((2100, 1500), progressive=True, quality=85),
        "restart markers": jpeg((1000, 760), restart_marker_blocks=3),
        "odd small": jpeg((333, 251), seed=2),
        "tiny": jpeg((3, 2), seed=3),
        "portrait": jpeg((1500, 2600), seed=4),
        "wide": jpeg((4000, 300), seed=5),
        "mpo": mpo(jpeg((1600, 1200), seed=7)),
    }
    base = jpeg((1300, 800), seed=6)
    for orientation in range(1, 9):
        variants[f"exif orientation {orientation}"] = with_orientation(base, orientation)
    pillow_order = 0
    for name, data in variants.items():
        for spec in (LITE0, RESNET):
            fast, slow = both_ways(monkeypatch, data, spec, draft)
            assert_same(fast, slow, f"{name} {spec.interpolation}")
        scale = decode._draft_scale(Image.open(io.BytesIO(data)).size, draft)
        size = (-(-fast.width // scale), -(-fast.height // scale))
        pillow_order += decode._vertical_first(size, (224, 224))  # e.g. the portrait at 1/2: Pillow's path
    assert pillow_order < len(variants) // 2 and len(taken) == 2 * (len(variants) - pillow_order) and all(taken)


def test_an_mpo_is_decoded_like_its_first_picture(monkeypatch: pytest.MonkeyPatch, taken: list[bool]) -> None:
    """Many cameras write MPO (a JPEG, then a preview): it used to be decoded in full, never drafted."""
    both = mpo(jpeg((2400, 1800), seed=14, quality=92))
    assert Image.open(io.BytesIO(both)).format == "MPO"
    for draft in (None, 512):
        fast, slow = both_ways(monkeypatch, both, LITE0, draft)
        assert_same(fast, slow, f"mpo draft={draft}")
        assert fast.reduced == slow.reduced == (draft is not None)  # drafted, by both paths
        assert (fast.width, fast.height) == (2400, 1800)  # the first picture, not the preview
    assert taken and all(taken)


def test_other_jpegs_and_tall_panoramas_take_pillows_path(monkeypatch: pytest.MonkeyPatch, taken: list[bool]) -> None:
    cases = {
        "greyscale": jpeg((640, 480), mode="L"),
        "cmyk": jpeg((640, 480), mode="CMYK"),
        # Pillow resizes these vertically first (the height shrinks over twice as much as the width).
        "tall panorama": jpeg((300, 2600), seed=8),
        "small portrait": jpeg((251, 333), seed=2),
    }
    for name, data in cases.items():
        fast, slow = both_ways(monkeypatch, data, LITE0, 512)
        assert_same(fast, slow, name)
    assert taken == []  # none of them was given to libjpeg-turbo


def test_corrupt_jpegs_get_pillows_verdict(monkeypatch: pytest.MonkeyPatch, taken: list[bool]) -> None:
    """libjpeg-turbo's complaint is never the answer: Pillow decodes again, and its error (or its
    tolerance of a recoverable fault) is what the user gets, as before."""
    good = jpeg((800, 600), seed=9, quality=90)
    damaged = bytearray(good)
    damaged[len(good) // 2 : len(good) // 2 + 40] = b"\xff\x00" * 20  # garbage in the entropy data
    truncated = good[: len(good) * 2 // 3]
    for name, data in {"damaged": bytes(damaged), "truncated": truncated}.items():
        outcomes = []
        for available in (True, False):
            with monkeypatch.context() as m:
                m.setattr(fastjpeg, "AVAILABLE", available)
                try:
                    outcomes.append(decode.decode_array(data, 10**9, LITE0, 512).array)
                except DecodeError as exc:
                    outcomes.append(str(exc))
        if isinstance(outcomes[0], str):
            assert outcomes[0] == outcomes[1], name
        else:
            assert isinstance(outcomes[1], np.ndarray) and np.array_equal(outcomes[0], outcomes[1]), name
    assert taken and not any(taken)
    with pytest.raises(DecodeError, match="truncated"):
        decode.decode_array(truncated, 10**9, LITE0, 512)


def test_scratch_is_lent_to_one_decode_at_a_time() -> None:
    scratch = fastjpeg.Scratch()
    with scratch.borrow(1000) as first:
        assert first is not None and first.size >= 1000
        with scratch.borrow(10) as second:
            assert second is None  # in use: that decode gets a fresh array instead
    with scratch.borrow(500) as again:
        assert again is first  # kept and reused
    with scratch.borrow(fastjpeg.MAX_KEPT_BYTES + 1) as huge:
        assert huge is None
    scratch.release()
    with scratch.borrow(10) as fresh:
        assert fresh is not None and fresh is not first


def test_a_reused_buffer_changes_nothing(monkeypatch: pytest.MonkeyPatch, taken: list[bool]) -> None:
    scratch = fastjpeg.Scratch()
    photos: list[Callable[[], bytes]] = [lambda: jpeg((1600, 1200), seed=11), lambda: jpeg((900, 700), seed=12),
                                         lambda: jpeg((1600, 1200), seed=13)]
    for make in photos:
        data = make()
        fast, slow = both_ways(monkeypatch, data, LITE0, None, scratch)
        assert_same(fast, slow, "reused buffer")
    assert all(taken)
