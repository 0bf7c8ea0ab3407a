"""AVIF and JPEG XL are photos like any other: listed, decoded, tagged as the photo they were made from,
thumbnailed, served with their real type; a broken one is refused with a reason."""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from tagger.cli import cli
from tagger.engine.decode import HEIF_SUPPORTED, JXL_SUPPORTED, decode_bytes
from tagger.fileio import is_image_name, looks_like_an_image
from tagger.web.thumbs import render

from conftest import top_two

FORMATS = {"AVIF": ".avif", "JXL": ".jxl"}


CLEAR = 0.05  # a top-1 this far ahead of the second is not a near tie that recompression may flip


def converted(sources: dict[str, Path], folder: Path, **options: object) -> dict[str, Path]:
    """Each photo saved as AVIF and JPEG XL by Pillow: the file made -> the photo it was made from."""
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    for name, source in sources.items():
        with Image.open(source) as img:
            rgb = img.convert("RGB")
            for fmt, suffix in FORMATS.items():
                out = folder / f"{name}{suffix}"
                rgb.save(out, fmt, **(options or {"quality": 90}))
                made[out.name] = source
    return made


def test_the_plugins_are_there() -> None:
    """The set-up installs them: a missing one would refuse every such file (with a reason)."""
    assert JXL_SUPPORTED and HEIF_SUPPORTED
    assert is_image_name(Path("a.AVIF")) and is_image_name(Path("b.jxl"))


def test_lossless_jpeg_xl_and_avif_at_quality_100_give_the_original_pixels(sample_paths: dict[str, Path], tmp_path: Path) -> None:
    """Exactly for JPEG XL (so the same top-1 on any CPU); within a few grey levels on average for AVIF."""
    import numpy as np

    for name, source in sample_paths.items():
        with Image.open(source) as img:
            rgb = img.convert("RGB")
        original = np.asarray(rgb, dtype=np.int16)
        for fmt, options in (("JXL", {"lossless": True}), ("AVIF", {"quality": 100})):
            out = io.BytesIO()
            rgb.save(out, fmt, **options)
            pixels = np.asarray(decode_bytes(out.getvalue(), 10**8).image, dtype=np.int16)
            if fmt == "JXL":
                assert np.array_equal(pixels, original), name
            else:
                assert np.abs(pixels - original).mean() < 3.0, name  # 0.5-1.6 here; a colour or turn error is tens


def test_avif_and_jpeg_xl_at_quality_90_get_the_top_1_of_the_photo_they_were_made_from(
    tmp_path: Path, sample_paths: dict[str, Path], write_config: Callable[..., Path], lite0: object
) -> None:
    """Scanned beside the originals: wherever the original's top-1 is clear (not a near tie), the
    AVIF and the JPEG XL made from it get the same one."""
    library = tmp_path / "library"
    made = converted(sample_paths, library)
    for source in sample_paths.values():
        (library / f"original-{source.name}").write_bytes(source.read_bytes())
    result = CliRunner().invoke(cli, ["--config", str(write_config([library])), "scan"])
    assert result.exit_code == 0 and "0 failed" in result.output, result.output
    found = top_two(tmp_path / "index.sqlite")
    assert set(made) <= set(found), sorted(set(made) - set(found))
    clear = {name: source for name, source in made.items() if found[f"original-{source.name}"][1] >= CLEAR}
    assert len(clear) >= 2 * 3, found  # at least 3 of the 6 photos are clear: the check below is not empty
    differ = {name: (found[name][0], found[f"original-{s.name}"][0]) for name, s in clear.items()
              if found[name][0] != found[f"original-{s.name}"][0]}
    assert not differ, differ


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_thumbnail_is_a_jpeg_and_the_sniffer_knows_the_format(
    tmp_path: Path, sample_paths: dict[str, Path], fmt: str
) -> None:
    first = dict(list(sample_paths.items())[:1])
    converted(first, tmp_path)
    original = next(p for p in tmp_path.iterdir() if p.suffix == FORMATS[fmt])
    data = original.read_bytes()
    assert looks_like_an_image(data[:16])
    decoded = decode_bytes(data, 10**8)
    with Image.open(next(iter(first.values()))) as source:
        assert decoded.format == fmt and decoded.image.size == source.size
    jpeg = render(data, 200, 10**8)
    with Image.open(io.BytesIO(jpeg)) as thumbnail:
        assert jpeg[:3] == b"\xff\xd8\xff" and max(thumbnail.size) <= 200


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_truncated_file_is_refused_with_a_reason_and_the_scan_goes_on(
    tmp_path: Path, sample_paths: dict[str, Path], write_config: Callable[..., Path], fmt: str
) -> None:
    library = tmp_path / "library"
    converted(dict(list(sample_paths.items())[:1]), library)
    whole = next(p for p in library.iterdir() if p.suffix == FORMATS[fmt])
    broken = library / f"broken{FORMATS[fmt]}"
    broken.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 3])
    for other in library.iterdir():
        if other.suffix != FORMATS[fmt]:
            other.unlink()
    config = write_config([library])
    result = CliRunner().invoke(cli, ["--config", str(config), "scan"])
    assert result.exit_code == 0, result.output
    assert "1 failed" in result.output and f"broken{FORMATS[fmt]}" in result.output
    assert set(top_two(tmp_path / "index.sqlite")) == {whole.name}


def test_the_viewer_sends_originals_with_their_real_type() -> None:
    """Browsers show an AVIF original themselves; a JPEG XL one mostly not, so pages show the JPEG preview."""
    import mimetypes

    import tagger.web.media  # noqa: F401  # adds the types Python's table may lack

    assert mimetypes.guess_type("a.avif")[0] == "image/avif" and mimetypes.guess_type("b.JXL")[0] == "image/jxl"
