"""Embeddings, similar images, near-duplicates and learned tags, on real photos and the real model."""
from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tagger.engine.classify import Classifier

from tagger.engine.export import cached_export_is_current, onnx_cache_path
from tagger.cli import cli
from tagger.engine.decode import open_rgb, preprocess
from tagger.index import Index
from tagger.index.vectors import VectorRows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import realsets  # noqa: E402,F401


def invoke(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    return result


def rows(index: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(index) as conn:
        conn.execute("PRAGMA foreign_keys=ON")  # as tagger's own connections have it
        return conn.execute(sql, params).fetchall()


def test_features_from_onnx_and_pytorch_agree(lite0: Classifier, lite0_torch: Classifier, sample_paths: dict[str, Path]) -> None:
    batch = np.stack([preprocess(open_rgb(p, 10**8).image, lite0.spec.preprocess) for p in sample_paths.values()])
    tags, _, fast = lite0.predict(batch, 3)
    reference_tags, _, reference = lite0_torch.predict(batch, 3)
    assert fast.shape == reference.shape == (len(sample_paths), 1280)
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-4)
    assert np.min(np.sum(fast * reference, axis=1)) > 0.999
    assert [t[0].class_id for t in tags] == [t[0].class_id for t in reference_tags]


def test_an_export_without_features_is_made_again(lite0: Classifier, weights_dir: Path) -> None:
    path = onnx_cache_path(lite0.spec, lite0.weights, weights_dir, "fp32")
    meta_path = path.with_name(path.name + ".json")
    meta = json.loads(meta_path.read_text())
    outputs = meta["outputs"]
    assert "features" in outputs and cached_export_is_current(path, lite0.weights, "fp32")
    del meta["outputs"]  # as written before embeddings existed
    meta_path.write_text(json.dumps(meta))
    try:
        assert not cached_export_is_current(path, lite0.weights, "fp32")
    finally:
        meta["outputs"] = outputs
        meta_path.write_text(json.dumps(meta))


def test_scan_stores_one_embedding_per_content_and_backfills(
    views_library: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    shutil.copy(views_library / "coffee.jpg", views_library / "coffee copy.jpg")
    config = write_config()
    result = invoke(config, "scan")
    assert result.exit_code == 0, result.output
    index = tmp_path / "index.sqlite"
    contents = rows(index, "SELECT COUNT(*) FROM images")[0][0]
    stored = rows(index, "SELECT sha256, model, dims, vector FROM embeddings")
    assert len(stored) == contents == len(list(views_library.glob("*.jpg"))) - 1
    for _, model, dims, blob in stored:
        vector = np.frombuffer(blob, dtype=np.int8)
        assert (model, dims, len(blob)) == ("efficientnet-lite0", 1280, 1280)
        assert int(np.abs(vector.astype(np.int32)).max()) == 127  # each scaled by its own peak
    # An index from before embeddings: they are computed once, by the next scan, without re-tagging.
    rows(index, "DELETE FROM embeddings WHERE sha256 < '8'")
    missing = contents - rows(index, "SELECT COUNT(*) FROM embeddings")[0][0]
    assert missing > 0
    result = invoke(config, "scan")
    assert result.exit_code == 0, result.output
    assert f"embeddings: {missing} computed" in result.output
    assert "0 classified" in result.output
    assert rows(index, "SELECT COUNT(*) FROM embeddings")[0][0] == contents
    result = invoke(config, "embed")
    assert result.exit_code == 0 and "0 missing" in result.output
    # Removed with their content.
    rows(index, "DELETE FROM images WHERE sha256 IN (SELECT sha256 FROM files WHERE path LIKE '%coffee.jpg')")
    assert rows(index, "SELECT COUNT(*) FROM embeddings")[0][0] == contents - 1


@pytest.mark.parametrize("search", ["every row", "shortlist"])
def test_similar_puts_the_same_subject_first(
    views_library: Path, write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, search: str
) -> None:
    if search == "shortlist":  # a large library's way, on real embeddings: 12 of 40 by their bit codes
        from tagger.vectors import similar

        monkeypatch.setattr(similar, "EXACT_BELOW", 0)
        monkeypatch.setattr(similar, "SHORTLIST", 12)
        monkeypatch.setattr(similar, "PER_RESULT", 3)
    config = write_config()
    assert invoke(config, "scan").exit_code == 0
    result = invoke(config, "similar", str(views_library / "chelsea.jpg"), "--limit", "3", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert len(found) == 3
    assert all(Path(f["path"]).name.startswith("chelsea_view") for f in found[:2])
    assert [f["score"] for f in found] == sorted((f["score"] for f in found), reverse=True)
    result = invoke(config, "similar", str(views_library / "coffee.jpg"), "--limit", "2")
    assert result.exit_code == 0
    assert [Path(p).name.split("_view")[0] for p in result.output.splitlines()] == ["coffee", "coffee"]
    result = invoke(config, "similar", str(views_library / "nothing.jpg"))
    assert result.exit_code == 1 and "nothing.jpg: not a tagged image in the index" in result.output


def test_similar_shows_each_picture_once_with_its_copies_counted(
    views_library: Path, write_config: Callable[..., Path]
) -> None:
    """Six files of the photo most like the query (same bytes) used to fill any --limit alone (issue 28)."""
    config = write_config()
    assert invoke(config, "scan").exit_code == 0
    query = str(views_library / "chelsea.jpg")
    nearest = json.loads(invoke(config, "similar", query, "--limit", "1", "--format", "json").stdout)[0]["path"]
    for i in range(5):
        shutil.copy(nearest, views_library / f"again {i}.jpg")
    assert invoke(config, "scan").exit_code == 0
    result = invoke(config, "similar", query, "--limit", "3", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert len(found) == 3 and len({f["sha256"] for f in found}) == 3
    assert found[0]["path"] == min([nearest, *(str(views_library / f"again {i}.jpg") for i in range(5))])
    assert found[0]["copies"] == 6 and all(f["copies"] == 1 for f in found[1:])
    listed = invoke(config, "similar", query, "--limit", "3")
    assert listed.exit_code == 0 and listed.stdout.splitlines() == [f["path"] for f in found]
    assert "not listed: 5 more files with the same bytes as 1 image above" in listed.stderr
    from tagger.config import load_config
    from tagger.web import create_app

    client = create_app(load_config(config)).test_client()
    api = client.get(f"/api/images/{query.lstrip('/')}/similar?limit=3").get_json()["similar"]
    assert [(s["path"], s["copies"]) for s in api] == [(f["path"], f["copies"]) for f in found]


def test_duplicates_groups_copies_not_other_shots(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    from realsets import make_set

    lib = tmp_path / "library"
    pictures = make_set(lib, shots_per_subject=2, subjects=["astronaut", "chelsea", "coffee", "rocket", "camera"])
    shutil.copy(pictures[0].path, lib / "same bytes.jpg")
    config = write_config()
    assert invoke(config, "scan").exit_code == 0
    result = invoke(config, "duplicates", "--format", "json")
    assert result.exit_code == 0, result.output
    groups = json.loads(result.output)
    shot_of = {str(p.path): (p.subject, p.shot) for p in pictures}
    shot_of[str(lib / "same bytes.jpg")] = shot_of[str(pictures[0].path)]
    for group in groups:
        assert len({shot_of[p] for p in group}) == 1, group  # other shots of the scene are never copies
        original = [p for p in group if "_copy" not in p and "same bytes" not in p]
        assert not original or group[0] == original[0] or Path(group[0]).name == "same bytes.jpg"
    grouped = {p for group in groups for p in group}
    copies = [p for p in pictures if p.kind != "original"]
    assert sum(str(p.path) in grouped for p in copies) >= 0.8 * len(copies)
    assert str(lib / "same bytes.jpg") in grouped
    text = invoke(config, "duplicates")
    assert text.exit_code == 0 and text.output.startswith("* ")


def test_viewer_similar_strip_api_and_duplicates_page(views_library: Path, write_config: Callable[..., Path]) -> None:
    from tagger.config import load_config
    from tagger.web import create_app

    shutil.copy(views_library / "coffee.jpg", views_library / "coffee again.jpg")
    config_path = write_config()
    assert invoke(config_path, "scan").exit_code == 0
    client = create_app(load_config(config_path)).test_client()
    raw = str(views_library / "chelsea.jpg").lstrip("/")
    response = client.get(f"/api/images/{raw}/similar?limit=2")
    assert response.status_code == 200
    similar = response.get_json()["similar"]
    assert len(similar) == 2 and all("chelsea_view" in s["path"] for s in similar)
    assert client.get(f"/api/images/{raw}/similar?limit=0").status_code == 400
    assert client.get("/api/images/tmp/none.jpg/similar").status_code in (403, 404)
    page = client.get(f"/image/{raw}")
    assert page.status_code == 200 and b'class="similar"' in page.data
    assert similar[0]["links"]["thumbnail"].encode() in page.data
    duplicates = client.get("/duplicates")
    assert duplicates.status_code == 200 and b"coffee again.jpg" in duplicates.data and b"largest" in duplicates.data
    groups = client.get("/api/duplicates").get_json()["groups"]
    coffee = [g for g in groups if str(views_library / "coffee.jpg") in g]
    assert len(coffee) == 1 and str(views_library / "coffee again.jpg") in coffee[0]


def test_learned_tag_is_a_keyword_everywhere(
    views_library: Path, write_config: Callable[..., Path], tmp_path: Path, sample_paths: dict[str, Path]
) -> None:
    config = write_config(xmp={"enabled": True})
    assert invoke(config, "scan").exit_code == 0
    chelsea = sorted(views_library.glob("chelsea_view*.jpg"))
    assert len(chelsea) == 2
    result = invoke(config, "learn", "mycat", str(views_library / "chelsea.jpg"), str(chelsea[0]), "--not", str(views_library / "coffee.jpg"))
    assert result.exit_code == 0, result.output
    assert "learned 'mycat' from 2 examples and 1 counter-example:" in result.output
    assert str(chelsea[1]) in result.output  # proposed: the other view of the cat
    found = invoke(config, "query", "tag:mycat", "--format", "paths")
    assert found.exit_code == 0, found.output
    paths = set(found.output.splitlines())
    assert {str(views_library / "chelsea.jpg"), *map(str, chelsea)} <= paths
    assert all("chelsea" in Path(p).name for p in paths)
    doc = json.loads((views_library / "chelsea.jpg.tags.json").read_text())
    assert {"keyword": "mycat", "path": "learned/mycat"}.items() <= next(
        k for k in doc["keywords"] if k["keyword"] == "mycat"
    ).items()
    assert "mycat" in (views_library / "chelsea.jpg.xmp").read_text()
    listed = invoke(config, "learned")
    assert listed.exit_code == 0 and "mycat" in listed.output and " 2 " in listed.output
    # Kept by a full retag; removed for good by a correction, even after teaching again.
    assert invoke(config, "retag", "--all").exit_code == 0
    assert str(chelsea[1]) in invoke(config, "query", "tag:mycat").output
    assert invoke(config, "tag", "remove", str(chelsea[1]), "mycat").exit_code == 0
    assert invoke(config, "learn", "mycat", str(chelsea[0])).exit_code == 0
    assert str(chelsea[1]) not in invoke(config, "query", "tag:mycat").output
    # New images get it as they are tagged.
    with Image.open(sample_paths["chelsea"]) as img:
        img.convert("RGB").resize((300, 200)).save(views_library / "new cat.jpg", quality=80)
    assert invoke(config, "scan").exit_code == 0
    assert str(views_library / "new cat.jpg") in invoke(config, "query", "tag:mycat").output
    # A rejected proposal moves side: no longer an example.
    result = invoke(config, "learn", "mycat", "--not", str(chelsea[0]))
    assert result.exit_code == 0 and "from 1 example and 2 counter-examples" in result.output
    bad = invoke(config, "learn", "mycat", str(tmp_path / "missing.jpg"))
    assert bad.exit_code == 1 and "missing.jpg: not a tagged image" in bad.output
    assert invoke(config, "learn", " ", str(views_library / "chelsea.jpg")).exit_code == 1


def test_viewer_teaches_a_tag_from_selected_images_and_proposals(views_library: Path, write_config: Callable[..., Path]) -> None:
    from tagger.config import load_config
    from tagger.web import create_app
    from tagger.web.context import CSRF_COOKIE

    config_path = write_config()
    assert invoke(config_path, "scan").exit_code == 0
    client = create_app(load_config(config_path)).test_client()
    grid = client.get("/")
    assert grid.status_code == 200 and b'id="bulk"' in grid.data and b'formaction="/learn"' in grid.data and b'name="path"' in grid.data
    token = "t" * 32
    client.set_cookie(CSRF_COOKIE, token)
    chelsea = sorted(views_library.glob("chelsea_view*.jpg"))
    form = {"csrf": token, "name": "mycat", "side": "yes", "path": [str(views_library / "chelsea.jpg"), str(chelsea[0])]}
    response = client.post("/learn", data=form)
    assert response.status_code == 303 and response.headers["Location"].endswith("/learned/mycat")
    page = client.get("/learned/mycat")
    assert page.status_code == 200 and chelsea[1].name.encode() in page.data  # proposed
    reject = client.post("/learn", data={"csrf": token, "name": "mycat", "side": "no", "path": str(chelsea[1])})
    assert reject.status_code == 303
    listed = invoke(config_path, "learned").output.split()
    assert listed[listed.index("mycat") + 1 : listed.index("mycat") + 3] == ["2", "1"]
    assert client.post("/learn", data={"name": "x", "path": str(chelsea[0])}).status_code == 403  # no form token
    assert client.post("/learn", data={"csrf": token, "name": "", "path": str(chelsea[0])}).status_code == 400
    assert client.get("/learned/nothing").status_code == 404
    image_page = client.get(f"/image/{str(chelsea[0]).lstrip('/')}")
    assert b'class="teach"' in image_page.data
