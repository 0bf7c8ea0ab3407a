"""XMP and JSON sidecars converge: switching XMP on where other tools' XMP files exist, changing the
XMP naming, prefix or sidecar.folder, and `retag --all` after another tool dropped tagger's keywords
(issue 29)."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tagger.cli import cli
from tagger.config import load_config
from tagger.index import Index
from tagger.library.jsonsidecar import sidecar_path
from tagger.library.xmp import read_keywords

DARKTABLE_RATING = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   xmp:Rating="4"
   darktable:xmp_version="5"/>
 </rdf:RDF>
</x:xmpmeta>
"""

DIGIKAM_KEYWORDS = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/">
   <digiKam:TagsList>
    <rdf:Seq>
     <rdf:li>People/Ann</rdf:li>
    </rdf:Seq>
   </digiKam:TagsList>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>People|Ann</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Ann</rdf:li>
    </rdf:Bag>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@pytest.fixture
def library(tmp_path: Path, sample_jpegs: list[Path]) -> Path:
    lib = tmp_path / "library"
    lib.mkdir()
    for src in sample_jpegs[:4]:
        shutil.copy(src, lib / src.name)
    return lib


def tagger_cli(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result


def ours(image: Path, style: str = "append", prefix: str = "auto") -> list[str]:
    """tagger's hierarchical entries in the image's XMP file."""
    lists = read_keywords(image, style)
    return [k for k in lists["digikam"] + lists["hierarchical"] if k.startswith((prefix + "/", prefix + "|"))]


def machine_paths(config: Path, image: Path) -> set[str]:
    with Index.open(load_config(config).index, readonly=True) as store:
        record = store.file_record(str(image))
        assert record is not None and record.sha256 is not None
        return {k.path for k in store.keywords(record.sha256) if k.source == "model"}


@pytest.fixture
def with_other_tools(library: Path, write_config: Callable[..., Path]) -> tuple[Path, Path, Path, Path]:
    """A library scanned with XMP off, then given a darktable XMP (a rating only) and a digiKam XMP
    (its own keywords): (config, darktable's image, digiKam's image, an image with no XMP)."""
    config = write_config([library])
    tagger_cli(config, "scan")
    rated, labelled, bare, *_ = sorted(library.glob("*.jpg"))
    Path(f"{rated}.xmp").write_text(DARKTABLE_RATING, encoding="utf-8")
    Path(f"{labelled}.xmp").write_text(DIGIKAM_KEYWORDS, encoding="utf-8")
    return config, rated, labelled, bare


def test_switching_xmp_on_merges_tagger_keywords_into_other_tools_files(
    with_other_tools: tuple[Path, Path, Path, Path], write_config: Callable[..., Path]
) -> None:
    config, rated, labelled, bare = with_other_tools
    write_config([rated.parent], xmp={"enabled": True})
    result = tagger_cli(config, "scan")
    assert "4 unchanged" in result.output  # no model run
    for image in (rated, labelled, bare):
        expected = {"auto/" + p for p in machine_paths(config, image)}
        assert expected and expected <= set(read_keywords(image)["digikam"]), image
    assert 'xmp:Rating="4"' in Path(f"{rated}.xmp").read_text(encoding="utf-8")
    lists = read_keywords(labelled)
    assert "People/Ann" in lists["digikam"] and "People|Ann" in lists["hierarchical"] and "Ann" in lists["subject"]
    again = tagger_cli(config, "retag", "--all")
    assert "0 files' sidecars rewritten" in again.output  # all converged: nothing differs, nothing written


def test_changing_the_xmp_naming_moves_tagger_keywords_and_leaves_other_tools_data(
    with_other_tools: tuple[Path, Path, Path, Path], write_config: Callable[..., Path]
) -> None:
    config, rated, labelled, bare = with_other_tools
    write_config([rated.parent], xmp={"enabled": True, "style": "append"})
    tagger_cli(config, "scan")
    write_config([rated.parent], xmp={"enabled": True, "style": "replace"})
    tagger_cli(config, "scan")
    for image in (rated, labelled, bare):
        assert ours(image, "replace"), f"{image.stem}.xmp has tagger's keywords"
        assert not ours(image, "append"), f"{image.name}.xmp still has them"
    assert not Path(f"{bare}.xmp").exists()  # tagger's own old-style file, nothing else in it: removed
    assert 'xmp:Rating="4"' in Path(f"{rated}.xmp").read_text(encoding="utf-8")  # darktable's stays
    old = read_keywords(labelled, "append")
    assert old["digikam"] == ["People/Ann"] and old["subject"] == ["Ann"]  # digiKam's own keywords stay
    assert "Ann" not in read_keywords(labelled, "replace")["subject"]  # another tool's keywords are not copied


def test_changing_the_prefix_replaces_the_old_entries(
    with_other_tools: tuple[Path, Path, Path, Path], write_config: Callable[..., Path]
) -> None:
    config, rated, labelled, _ = with_other_tools
    write_config([rated.parent], xmp={"enabled": True})
    tagger_cli(config, "scan")
    write_config([rated.parent], xmp={"enabled": True, "prefix": "ml/"})
    tagger_cli(config, "scan")
    for image in (rated, labelled):
        assert not ours(image, prefix="auto")
        assert {"ml/" + p for p in machine_paths(config, image)} <= set(read_keywords(image)["digikam"])
    assert "People/Ann" in read_keywords(labelled)["digikam"]
    with Index.open(load_config(config).index, readonly=True) as store:
        assert store.sidecars_pending() == [] and store.setting("former_sidecar_settings") is None


def test_retag_all_rewrites_an_xmp_another_tool_stripped(
    library: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config([library], xmp={"enabled": True})
    tagger_cli(config, "scan")
    image = min(library.glob("*.jpg"))
    Path(f"{image}.xmp").write_text(DARKTABLE_RATING, encoding="utf-8")  # darktable rewrote it without ours
    json_before = sidecar_path(image).read_bytes()
    result = tagger_cli(config, "retag", "--all")
    assert "1 files' sidecars rewritten" in result.output
    assert {"auto/" + p for p in machine_paths(config, image)} <= set(read_keywords(image)["digikam"])
    assert 'xmp:Rating="4"' in Path(f"{image}.xmp").read_text(encoding="utf-8")
    assert sidecar_path(image).read_bytes() == json_before  # an unchanged JSON sidecar is not written again


def test_moving_sidecars_to_a_folder_removes_tagger_own_json_beside_the_images(
    library: Path, tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config([library])
    tagger_cli(config, "scan")
    images = sorted(library.glob("*.jpg"))
    assert all(sidecar_path(i).exists() for i in images)
    folder = tmp_path / "sidecars"
    write_config([library], sidecar={"folder": str(folder)})
    tagger_cli(config, "scan")
    assert not any(sidecar_path(i).exists() for i in images)
    assert all(sidecar_path(i, folder).exists() for i in images)


def test_an_interrupted_catch_up_is_finished_by_the_next_scan(
    with_other_tools: tuple[Path, Path, Path, Path], write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tagger.library.sidecars import SidecarWriter

    config, rated, labelled, bare = with_other_tools
    write_config([rated.parent], xmp={"enabled": True})

    def killed(*args: Any, **kwargs: Any) -> int:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(SidecarWriter, "rewrite", killed)
        result = CliRunner().invoke(cli, ["--config", str(config), "scan"])
        assert result.exit_code != 0
    assert not ours(rated)
    tagger_cli(config, "scan")  # the settings are stored as changed already; the owed marks remain
    for image in (rated, labelled, bare):
        assert ours(image)
