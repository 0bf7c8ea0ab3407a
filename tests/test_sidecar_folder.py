"""A library mounted read-only (a NAS share in a container) keeps its sidecars in a mirror tree under
`sidecar.folder`: written there, read back from there, moved and removed with their photos, served
by the viewer; nothing is written into the library."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tagger.config import load_config
from tagger.engine.classify import Classifier
from tagger.errors import ConfigError
from tagger.index import Index
from tagger.library.scan import Tagger
from tagger.web import create_app

from conftest import scan_once


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def mirrored(mirror: Path, image: Path, suffix: str) -> Path:
    return mirror / str(image.parent).lstrip("/") / (image.name + suffix)


def test_sidecars_live_in_the_mirror_tree_and_follow_their_photos(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], lite0: Classifier
) -> None:
    library = tmp_path / "library"
    (library / "trip").mkdir(parents=True)
    for photo in sample_jpegs[:3]:
        shutil.copy(photo, library / "trip" / photo.name)
    before = listing(library)
    mirror = tmp_path / "sidecars"
    config = load_config(write_config([library], sidecar={"folder": str(mirror)}, xmp={"enabled": True}))
    assert config.sidecar.folder == mirror
    first = library / "trip" / sample_jpegs[0].name
    with Index.open(config.index) as store:
        tagger = Tagger(config, lite0, store)
        try:
            summary = tagger.scan(list(config.folders))
            assert summary.classified == 3 and summary.sidecar_errors == 0
            assert listing(library) == before  # not one file written into the library
            document = json.loads(mirrored(mirror, first, ".tags.json").read_text())
            assert document["image"]["file"] == first.name and document["keywords"]
            assert "auto" in mirrored(mirror, first, ".xmp").read_text()
            assert store.file_record(str(first)).sidecar == str(mirrored(mirror, first, ".tags.json"))  # type: ignore[union-attr]
            again = tagger.scan(list(config.folders))
            assert again.unchanged == 3  # read back from the mirror: nothing rewritten

            moved = library / "trip" / "renamed.jpg"
            first.rename(moved)
            assert tagger.move(first, moved)
            assert not mirrored(mirror, first, ".tags.json").exists()
            assert json.loads(mirrored(mirror, moved, ".tags.json").read_text())["image"]["file"] == "renamed.jpg"
            assert mirrored(mirror, moved, ".xmp").exists() and not mirrored(mirror, first, ".xmp").exists()

            (library / "trip").rename(library / "2024")
            tagger.move_tree(library / "trip", library / "2024")
            assert mirrored(mirror, library / "2024" / "renamed.jpg", ".tags.json").exists()
            assert not (mirror / str(library / "trip").lstrip("/")).exists()

            gone = library / "2024" / sample_jpegs[1].name
            gone.unlink()
            assert tagger.forget([gone]) == 1
            assert not mirrored(mirror, gone, ".tags.json").exists()
            assert mirrored(mirror, gone, ".xmp").exists()  # an XMP sidecar stays, as beside a photo

            shutil.rmtree(library / "2024")
            tagger.forget_tree(library / "2024")
            assert not list((mirror / str(library / "2024").lstrip("/")).glob("*.tags.json"))
        finally:
            tagger.close()


def test_the_viewer_serves_a_sidecar_from_the_mirror_tree(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], lite0: Classifier
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(sample_jpegs[0], library / "a.jpg")
    config = load_config(write_config([library], sidecar={"folder": str(tmp_path / "sidecars")}))
    scan_once(config, lite0)
    app = create_app(config, lite0)
    try:
        client = app.test_client()
        raw = str(library / "a.jpg").lstrip("/")
        served = client.get(f"/sidecar/{raw}", buffered=True)
        assert served.status_code == 200 and json.loads(served.data)["image"]["file"] == "a.jpg"
        assert "a.jpg.tags.json" in client.get(f"/image/{raw}").get_data(as_text=True)
    finally:
        app.extensions["tagger"].close()


@pytest.mark.parametrize("inside", ["library", ""])
def test_a_sidecar_folder_holding_the_library_is_refused(
    tmp_path: Path, write_config: Callable[..., Path], inside: str
) -> None:
    library = tmp_path / "library"
    library.mkdir(exist_ok=True)
    folder = tmp_path / inside if inside else tmp_path
    with pytest.raises(ConfigError, match="sidecar.folder"):
        load_config(write_config([library], sidecar={"folder": str(folder)}))
