"""Camera RAW files are photos like any other: tagged as the picture they hold, upright, from the
camera's preview JPEG where it is big enough and from the sensor otherwise; a hostile RAW is refused
with a reason and the scan goes on. The RAWs are real DNGs written from the shipped photos
(scripts/sample_raw.py): no camera file can be downloaded."""
from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tagger.cli import cli
from tagger.engine.decode import decode_bytes
from tagger.engine.raw import open_raw
from tagger.errors import DecodeError
from tagger.fileio import is_image_name

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from sample_raw import make_dng, make_truncated_raw  # noqa: E402

from conftest import top_two  # noqa: E402

CLEAR = 0.05  # a top-1 this far ahead of the second is not a near tie that another decode may flip
MAX = 100_000_000
# As a camera held upright, turned to the left, or upside down stores a picture: the sensor's
# pixels turned back, and the orientation that shows them upright again.
TURNS = {"": (0, 1), "-portrait": (1, 6), "-portrait-left": (-1, 8), "-upside-down": (2, 3)}


def pixels(source: Path) -> np.ndarray:
    with Image.open(source) as img:
        return np.asarray(img.convert("RGB"))


def test_raw_names_are_images() -> None:
    assert all(is_image_name(Path(f"IMG_0001.{ext}")) for ext in ("CR2", "cr3", "NEF", "arw", "dng", "ORF", "RW2", "raf"))


def test_every_raw_gets_the_top_1_and_the_upright_size_of_the_photo_it_holds(
    tmp_path: Path, sample_paths: dict[str, Path], write_config: Callable[..., Path], lite0: object
) -> None:
    """With and without a preview, held in any of four ways: where the photo's own top-1 is clear,
    every RAW of it gets the same one, and the index records the picture upright."""
    library = tmp_path / "library"
    library.mkdir()
    made: dict[str, str] = {}
    for name, source in sample_paths.items():
        (library / f"original-{source.name}").write_bytes(source.read_bytes())
        rgb = pixels(source)
        for turn, (k, orientation) in TURNS.items():
            for preview in (True, False):
                out = library / f"{name}{turn}{'' if preview else '-nopreview'}.dng"
                make_dng(np.ascontiguousarray(np.rot90(rgb, k)), out, preview=preview, orientation=orientation)
                made[out.name] = f"original-{source.name}"
    result = CliRunner().invoke(cli, ["--config", str(write_config([library])), "scan"])
    assert result.exit_code == 0 and "0 failed" in result.output, result.output
    found = top_two(tmp_path / "index.sqlite")
    assert set(made) <= set(found), sorted(set(made) - set(found))
    for raw, original in made.items():  # the mosaic drops an odd last row or column
        assert abs(found[raw][2] - found[original][2]) <= 1 and abs(found[raw][3] - found[original][3]) <= 1, raw
    clear = {raw: original for raw, original in made.items() if found[original][1] >= CLEAR}
    assert len(clear) >= 3 * len(TURNS) * 2, found  # 3 of the 6 photos at least: the check is not empty
    differ = {raw: (found[raw][0], found[o][0]) for raw, o in clear.items() if found[raw][0] != found[o][0]}
    assert not differ, differ


def test_the_preview_is_used_when_big_enough_and_the_sensor_otherwise(tmp_path: Path, sample_paths: dict[str, Path]) -> None:
    rgb = pixels(sample_paths["coffee"])
    with_preview = make_dng(rgb, tmp_path / "a.dng", preview=True).read_bytes()
    without = make_dng(rgb, tmp_path / "b.dng", preview=False).read_bytes()
    preview = open_raw(with_preview, MAX, 256)
    assert preview is not None and preview.preview is not None and preview.pixels is None  # the sensor is not read
    sensor = open_raw(without, MAX, 256)
    assert sensor is not None and sensor.preview is None and sensor.pixels is not None
    assert sensor.pixels.shape[:2] == (rgb.shape[0] // 2, rgb.shape[1] // 2)  # demosaiced at half size
    small = open_raw(with_preview, MAX, 4000)  # a preview under the model's input: the sensor instead
    assert small is not None and small.preview is None and small.pixels is not None
    shown = decode_bytes(with_preview, MAX)
    assert shown.format == "RAW" and (shown.width, shown.height) == (rgb.shape[1], rgb.shape[0])


def test_a_plain_tiff_is_still_pillows(tmp_path: Path, sample_paths: dict[str, Path]) -> None:
    out = io.BytesIO()
    Image.fromarray(pixels(sample_paths["coffee"])).save(out, "TIFF")
    assert open_raw(out.getvalue(), MAX, 256) is None
    assert decode_bytes(out.getvalue(), MAX).format == "TIFF"


def _absurd_preview(dng: bytes, side: int = 20000) -> bytes:
    """The same DNG whose preview JPEG claims side x side pixels (its SOF0 header rewritten)."""
    start = dng.index(b"\xff\xd8\xff")
    sof = dng.index(b"\xff\xc0", start)
    return dng[: sof + 5] + side.to_bytes(2, "big") * 2 + dng[sof + 9 :]


def test_hostile_raws_are_refused_with_a_reason(tmp_path: Path, sample_paths: dict[str, Path]) -> None:
    rgb = pixels(sample_paths["coffee"])
    good = make_dng(rgb, tmp_path / "good.dng", preview=True)
    with pytest.raises(DecodeError, match="RAW preview claims 20000x20000"):
        open_raw(_absurd_preview(good.read_bytes()), MAX, 256)
    # One LibRaw itself will not read (over its own limit) is passed over: the sensor is read instead.
    beyond = open_raw(_absurd_preview(good.read_bytes(), 65535), MAX, 256)
    assert beyond is not None and beyond.preview is None and beyond.pixels is not None
    with pytest.raises(DecodeError, match="RAW too large"):
        open_raw(good.read_bytes(), 1000, 256)
    cut = make_truncated_raw(tmp_path / "cut.dng", make_dng(rgb, tmp_path / "full.dng", preview=False))
    with pytest.raises(DecodeError, match="corrupt or truncated RAW"):
        open_raw(cut.read_bytes(), MAX, 256)


def test_a_scan_refuses_bad_raws_by_name_and_reason_and_tags_the_rest(
    tmp_path: Path, sample_paths: dict[str, Path], write_config: Callable[..., Path], lite0: object
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    rgb = pixels(sample_paths["coffee"])
    make_dng(rgb, library / "good.dng", preview=True)
    make_truncated_raw(library / "cut.nef", make_dng(rgb, tmp_path / "whole.dng", preview=False))
    (library / "notes.nef").write_text("not a raw file, only named like one\n")
    (library / "claims.dng").write_bytes(_absurd_preview((library / "good.dng").read_bytes()))
    result = CliRunner().invoke(cli, ["--config", str(write_config([library])), "scan"])
    assert result.exit_code == 0 and "3 failed" in result.output, result.output
    for name, reason in (("cut.nef", "corrupt or truncated RAW"), ("notes.nef", "not an image"),
                         ("claims.dng", "RAW preview claims")):
        assert any(name in line and reason in line for line in result.output.splitlines()), (name, result.output)
    assert set(top_two(tmp_path / "index.sqlite")) == {"good.dng"}


def test_type_raw_and_type_photo_find_the_raw_files_and_the_others(
    tmp_path: Path, sample_paths: dict[str, Path], write_config: Callable[..., Path], lite0: object
) -> None:
    """A RAW and the JPEG of the same picture side by side (same stem): both tagged, told apart by type:."""
    library = tmp_path / "library"
    library.mkdir()
    rgb = pixels(sample_paths["coffee"])
    make_dng(rgb, library / "IMG_0001.DNG", preview=True)
    Image.fromarray(rgb).save(library / "IMG_0001.JPG", quality=92)
    config = str(write_config([library]))
    assert CliRunner().invoke(cli, ["--config", config, "scan"]).exit_code == 0

    def query(text: str) -> list[str]:
        result = CliRunner().invoke(cli, ["--config", config, "query", text])
        assert result.exit_code == 0, result.output
        return sorted(Path(line).name for line in result.output.splitlines())

    assert query("espresso") == ["IMG_0001.DNG", "IMG_0001.JPG"]
    assert query("espresso type:raw") == query("^type:photo") == ["IMG_0001.DNG"]
    assert query("type:photo") == query("espresso ^type:raw") == ["IMG_0001.JPG"]
    assert query("type:raw type:photo") == ["IMG_0001.DNG", "IMG_0001.JPG"]  # either kind


def test_xmp_auto_merges_into_the_sidecar_of_either_style_and_a_shared_one_keeps_both_files_keywords(
    tmp_path: Path, sample_paths: dict[str, Path], write_config: Callable[..., Path], lite0: object
) -> None:
    """Lightroom's IMG_0001.xmp beside IMG_0001.DNG and IMG_0001.JPG: auto merges into it (no second
    sidecar), keeps the rating another tool wrote, and holds the keywords of both files; darktable's
    IMG_0002.DNG.xmp is merged into for the DNG it names."""
    from tagger.library.xmp import read_keywords

    library = tmp_path / "library"
    library.mkdir()
    coffee, moped = pixels(sample_paths["coffee"]), pixels(sample_paths["motorcycle_left"])
    make_dng(coffee, library / "IMG_0001.DNG", preview=True)
    Image.fromarray(moped).save(library / "IMG_0001.JPG", quality=92)  # not the same picture: two keyword sets
    lightroom = library / "IMG_0001.xmp"
    lightroom.write_text(RATED, encoding="utf-8")
    make_dng(moped, library / "IMG_0002.DNG", preview=False)
    darktable = library / "IMG_0002.DNG.xmp"
    darktable.write_text(RATED, encoding="utf-8")
    config = str(write_config([library], xmp={"enabled": True}))
    result = CliRunner().invoke(cli, ["--config", config, "scan"])
    assert result.exit_code == 0 and "0 failed" in result.output, result.output
    assert sorted(p.name for p in library.glob("*.xmp")) == ["IMG_0001.xmp", "IMG_0002.DNG.xmp"]  # none added
    for sidecar in (lightroom, darktable):
        assert 'xmp:Rating="4"' in sidecar.read_text(encoding="utf-8")  # another tool's, kept
    shared = set(read_keywords(library / "IMG_0001.DNG", "auto")["hierarchical"])
    assert {"auto|food|drink|espresso", "auto|vehicle|motorcycle"} <= shared, shared  # the DNG's and the JPEG's
    assert "auto|vehicle|motorcycle" in read_keywords(library / "IMG_0002.DNG", "auto")["hierarchical"]
    # A retag of everything rewrites the shared file with both again, not with the last file's alone.
    assert CliRunner().invoke(cli, ["--config", config, "retag", "--all"]).exit_code == 0
    assert set(read_keywords(library / "IMG_0001.JPG", "auto")["hierarchical"]) == shared


RATED = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/>
 </rdf:RDF>
</x:xmpmeta>
"""
