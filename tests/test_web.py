"""The viewer and JSON API through Flask's test client: every route, every refusal.

The library is real photos, tagged by the real model through a real scan.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from tagger.index import search as search_module
from tagger.engine.classify import Classifier
from tagger.config import Config, load_config
from tagger.engine.labels import Tag
from tagger.index.records import ImageFacts
from tagger.index import Listing, Index
from tagger.web import create_app

from conftest import scan_once

XSS_PATH = "<script>alert(1)</script>.jpg"  # a folder "<script>alert(1)<" holding "script>.jpg"
TOKEN = "a-long-enough-secret-token"


@dataclasses.dataclass(frozen=True)
class Library:
    root: Path
    config: Config
    outside: Path  # an image outside the folders, reached by the symlink evil.jpg


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_jpegs: list[Path], lite0: Classifier,
            weights_dir: Path) -> Library:
    base = tmp_path_factory.mktemp("web")
    root = base / "library"
    photos = {p.stem: p for p in sample_jpegs}
    (root / "2024" / "trip").mkdir(parents=True)
    (root / "cats").mkdir()
    shutil.copy(photos["coffee"], root / "2024" / "trip" / "coffee.jpg")
    shutil.copy(photos["chelsea"], root / "cats" / "chelsea.jpg")
    for name in ("rocket", "astronaut", "motorcycle_left", "grace_hopper"):
        shutil.copy(photos[name], root / f"{name}.jpg")
    xss = root / XSS_PATH
    xss.parent.mkdir()
    with Image.open(photos["rocket"]) as img:
        img.save(xss, quality=70)
        turned = img.convert("RGB").resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees: 200 x 300
    turned.save(root / "rotated.jpg", exif=exif.tobytes())
    (root / "broken.jpg").write_text("not an image")
    outside = base / "outside"
    outside.mkdir()
    with Image.open(photos["astronaut"]) as img:
        img.resize((128, 128)).save(outside / "secret.jpg", quality=60)
    (root / "evil.jpg").symlink_to(outside / "secret.jpg")
    for i, path in enumerate(sorted(p for p in root.rglob("*.jpg"))):
        os.utime(path, ns=(1_700_000_000_000_000_000 + i * 10**12,) * 2)  # evil.jpg: its target's
    limits = {"max_upload_mb": 1, "max_upload_pixels": 4_000_000, "page_size": 3}
    config = load_config(scanned_config(root, lite0, weights_dir, web=limits))
    return Library(root, config, outside)


def scanned_config(library: Path, classifier: Classifier, weights_dir: Path, **sections: Any) -> Path:
    """A config for `library` (written beside it), whose index a real scan has filled."""
    config_file = library.parent / "tagger.yaml"
    model = {"name": "efficientnet-lite0", "fallback": None, "min_score": 0.01, "runtime": "onnx", "precision": "fp32"}
    data = {"folders": [str(library)], "index": str(library.parent / "index.sqlite"), "weights_dir": str(weights_dir)}
    config_file.write_text(yaml.safe_dump({**data, "model": model, **sections}))
    config = load_config(config_file)
    scan_once(config, classifier)
    return config_file


class BufferedClient(FlaskClient):
    """Reads each response whole and closes it, as a browser does (no file left open)."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def make_app(config: Config, classifier: Classifier | None, **web: Any) -> Flask:
    app = create_app(dataclasses.replace(config, web=dataclasses.replace(config.web, **web)), classifier)
    app.testing = True
    app.test_client_class = BufferedClient
    return app


@pytest.fixture
def app(library: Library, lite0: Classifier) -> Iterator[Flask]:
    app = make_app(library.config, lite0)
    yield app
    app.extensions["tagger"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def url_path(path: Path | str) -> str:
    return str(path).lstrip("/")


def upload(client: FlaskClient, url: str, *files: tuple[str, bytes]) -> Any:
    """POST files as multipart, encoded in memory (the test client would spool a large body to a
    temporary file and leave it open when the server refuses it unread)."""
    fields = MultiDict([("file", FileStorage(io.BytesIO(data), filename=name)) for name, data in files])
    boundary, body = encode_multipart(fields)
    return client.post(url, data=body, content_type=f"multipart/form-data; boundary={boundary}")


def api_paths(client: FlaskClient, query: str) -> list[str]:
    response = client.get(f"/api/images?limit=500&{query}")
    assert response.status_code == 200, response.json
    return [i["path"] for i in response.json["images"]]


def tags_of(client: FlaskClient, path: Path) -> list[dict[str, Any]]:
    tags: list[dict[str, Any]] = client.get(f"/api/images/{url_path(path)}").json["tags"]
    return tags


# -- browse ---------------------------------------------------------------------------------


def test_grid_shows_tagged_images_as_lazy_thumbnails(client: FlaskClient, library: Library) -> None:
    response = client.get("/?sort=name")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert page.count('loading="lazy"') == 3  # page_size
    assert "/thumb/" in page and "More images" in page
    assert "broken.jpg" not in page  # failed files are not in the grid


def test_sorting_orders(client: FlaskClient, library: Library) -> None:
    by_time = sorted(
        (p for p in library.root.rglob("*.jpg") if p.name not in ("broken.jpg", "evil.jpg")),
        key=lambda p: p.stat().st_mtime_ns,
    )
    newest = api_paths(client, "sort=newest")
    assert newest == [str(p) for p in reversed(by_time)]
    assert api_paths(client, "sort=oldest") == list(reversed(newest))
    assert api_paths(client, "sort=name") == sorted(newest)
    best_first = api_paths(client, "sort=score")
    scores = [client.get(f"/api/images/{url_path(p)}").json["tags"][0]["score"] for p in best_first]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("sort", ["newest", "oldest", "score", "name"])
def test_cursor_pages_have_no_duplicates_and_no_gaps(client: FlaskClient, sort: str) -> None:
    everything = api_paths(client, f"sort={sort}")
    seen: list[str] = []
    url: str | None = f"/api/images?sort={sort}&limit=2"
    while url:
        body = client.get(url).json
        seen += [i["path"] for i in body["images"]]
        url = body["next_url"]
        assert (body["next"] is None) == (url is None)
    assert seen == everything and len(set(seen)) == len(seen) == 8


def test_folder_filter(client: FlaskClient, library: Library) -> None:
    trip = library.root / "2024"
    assert api_paths(client, f"folder={trip}") == [str(trip / "trip" / "coffee.jpg")]
    page = client.get(f"/?folder={trip}").get_data(as_text=True)
    assert "coffee.jpg" in page and "chelsea.jpg" not in page
    assert "trip</a>" in page  # its subfolders to step into
    refused = client.get("/api/images?folder=/etc")
    assert refused.status_code == 400 and "not inside a configured folder" in refused.json["error"]
    assert "not inside a configured folder" in client.get("/?folder=/etc").get_data(as_text=True)


# -- search ---------------------------------------------------------------------------------


@pytest.mark.parametrize("term", ["espresso", "意式浓缩咖啡", "967", "n07920052", "ESPRESSO"])
def test_search_by_english_chinese_class_or_wordnet_id(client: FlaskClient, library: Library, term: str) -> None:
    assert api_paths(client, f"tag={term}")[0] == str(library.root / "2024" / "trip" / "coffee.jpg")
    page = client.get(f"/?tag={term}").get_data(as_text=True)
    assert "coffee.jpg" in page


def test_several_tags_at_once_must_all_match(client: FlaskClient, library: Library) -> None:
    chelsea = library.root / "cats" / "chelsea.jpg"
    first, second = tags_of(client, chelsea)[:2]
    both = api_paths(client, "q=" + quote(f"class:{first['wnid']} class:{second['wnid']}") + "&min_score=0")
    assert both == [str(chelsea)]
    assert api_paths(client, f"tag={first['wnid']},{second['wnid']}") == [str(chelsea)]  # keywords: both are "cat"
    assert api_paths(client, f"tag={first['wnid']}&tag=espresso") == []


def test_min_score(client: FlaskClient, library: Library) -> None:
    chelsea = library.root / "cats" / "chelsea.jpg"
    second = tags_of(client, chelsea)[1]
    raw = f"q=class:{second['wnid']}"  # the raw guess itself, not the keyword the rules make of it
    assert str(chelsea) in api_paths(client, f"{raw}&min_score={second['score'] - 0.001:.6f}")
    assert str(chelsea) not in api_paths(client, f"{raw}&min_score={second['score'] + 0.001:.6f}")
    assert client.get("/api/images?min_score=2").status_code == 400


def test_unknown_tag_is_explained(client: FlaskClient) -> None:
    response = client.get("/api/images?tag=espreso")
    assert response.status_code == 400
    assert "no keyword, label or alias matches 'espreso'" in response.json["error"]
    assert "espresso" in response.json["error"]
    assert "no ImageNet class matches 'espreso'" in client.get("/api/images?q=class:espreso").json["error"]
    page = client.get("/?tag=espreso")
    assert page.status_code == 200 and "did you mean: espresso" in page.get_data(as_text=True)


def test_bad_cursor(client: FlaskClient) -> None:
    assert client.get("/api/images?after=not-a-cursor").status_code == 400
    cursor = client.get("/api/images?sort=name&limit=1").json["next"]
    response = client.get(f"/api/images?sort=newest&after={cursor}")
    assert response.status_code == 400 and "sort='name'" in response.json["error"]


def test_tags_with_counts(client: FlaskClient) -> None:
    body = client.get("/api/tags").json
    assert body["images"] == 8  # evil.jpg, a symlink leading out, is refused by the scan
    counts = {t["label"]: t["count"] for t in body["tags"]}
    assert counts["espresso"] == 1
    matched = api_paths(client, "q=class:n07920052&min_score=0.01")
    assert counts["espresso"] == len(matched)
    page = client.get("/tags").get_data(as_text=True)
    assert "意式浓缩咖啡" in page and "/?q=class:espresso" in page
    assert "/?q=class:espresso" in client.get("/").get_data(as_text=True)  # the chips on the grid


# -- one image ------------------------------------------------------------------------------


def test_image_page(client: FlaskClient, library: Library) -> None:
    coffee = library.root / "2024" / "trip" / "coffee.jpg"
    response = client.get(f"/image/{url_path(coffee)}?sort=name")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert page.count("<meter") == 5 and "espresso" in page and "意式浓缩咖啡" in page
    assert f"/original/{url_path(coffee)}" in page and f"/sidecar/{url_path(coffee)}" in page
    assert "600 × 400 pixels" in page and "&#34;schema_version&#34;" in page  # the sidecar, escaped
    assert "/preview/" in page and "← Back to the list" in page
    chelsea = client.get(f"/image/{url_path(library.root / 'cats' / 'chelsea.jpg')}?sort=name").get_data(as_text=True)
    assert 'rel="prev"' in chelsea and 'rel="next"' in chelsea and "sort=name" in chelsea
    detail = client.get(f"/api/images/{url_path(coffee)}").json
    assert detail["tags"][0]["label"] == "espresso" and detail["exists"] is True
    assert client.get(f"/image/{url_path(library.root / 'nope.jpg')}").status_code == 404


def test_previous_and_next_follow_the_search_the_image_was_opened_from(
    client: FlaskClient, library: Library
) -> None:
    """Bug: on an image opened from a q search, previous and next walked the whole library."""
    chelsea = library.root / "cats" / "chelsea.jpg"
    alone = client.get(f"/image/{url_path(chelsea)}?q=folder:cats").get_data(as_text=True)
    assert 'rel="prev"' not in alone and 'rel="next"' not in alone  # the only match
    query = quote("^folder:cats ^folder:2024")
    matches = api_paths(client, f"q={query}")
    assert len(matches) >= 3 and str(chelsea) not in matches
    page = client.get(f"/image/{url_path(matches[1])}?q={query}").get_data(as_text=True)
    previous = page.split('rel="prev" href="', 1)[1].split('"', 1)[0]
    following = page.split('rel="next" href="', 1)[1].split('"', 1)[0]
    assert unquote(previous).startswith(f"/image/{url_path(matches[0])}?")
    assert unquote(following).startswith(f"/image/{url_path(matches[2])}?")
    assert "q=" in previous and "q=" in following  # and the search goes on with them


def test_tag_argument_means_the_tag_term_of_the_query_language(client: FlaskClient) -> None:
    for term in ("espresso", "cat", "n07920052"):
        assert api_paths(client, f"tag={term}") == api_paths(client, "q=" + quote(f"tag:{term}"))
    assert api_paths(client, "tag=cat&q=folder:cats") == api_paths(client, "q=" + quote("tag:cat folder:cats"))


def test_original_sidecar_and_preview(client: FlaskClient, library: Library) -> None:
    coffee = library.root / "2024" / "trip" / "coffee.jpg"
    original = client.get(f"/original/{url_path(coffee)}")
    assert original.data == coffee.read_bytes() and original.mimetype == "image/jpeg"
    sidecar = client.get(f"/sidecar/{url_path(coffee)}")
    assert json.loads(sidecar.data)["tags"][0]["label"] == "espresso"
    sha = client.get(f"/api/images/{url_path(coffee)}").json["sha256"]
    with Image.open(io.BytesIO(client.get(f"/preview/{sha}").data)) as img:
        assert img.size == (600, 400)


def test_thumbnails_are_cached_and_upright(client: FlaskClient, library: Library) -> None:
    detail = client.get(f"/api/images/{url_path(library.root / 'rotated.jpg')}").json
    response = client.get(f"/thumb/{detail['sha256']}")
    assert response.status_code == 200 and "immutable" in response.headers["Cache-Control"]
    with Image.open(io.BytesIO(response.data)) as img:
        assert img.size == (200, 300)  # EXIF orientation applied
    cached = Path(f"{library.config.index}.thumbs") / detail["sha256"][:2] / f"{detail['sha256']}-320.jpg"
    assert cached.read_bytes() == response.data
    assert client.get(f"/thumb/{detail['sha256']}").data == response.data
    assert client.get("/thumb/" + "0" * 64).status_code == 404
    assert client.get("/thumb/../../etc/passwd").status_code == 404


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["original", "image", "sidecar", "api/images"])
@pytest.mark.parametrize(
    "raw",
    [
        "{root}/../../../../etc/passwd",
        "{root}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "{root}/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "etc/passwd",
        "/etc/passwd",
        "{root}/./coffee.jpg",
        "{root}/cats/chelsea.jpg%00.png",
    ],
)
def test_paths_outside_the_folders_are_refused(client: FlaskClient, library: Library, route: str, raw: str) -> None:
    response = client.get(f"/{route}/" + raw.format(root=url_path(library.root)))
    assert response.status_code in (403, 404)
    assert b"root:" not in response.data


def test_symlink_leading_out_is_refused(client: FlaskClient, library: Library) -> None:
    evil = url_path(library.root / "evil.jpg")
    for route in ("original", "image", "api/images"):
        assert client.get(f"/{route}/{evil}").status_code == 403
    with Index.open(library.config.index, readonly=True) as store:
        record = store.file_record(str(library.root / "evil.jpg"))
    # the scan refused it with the reason, as the viewer does: never tagged and then refused
    assert record is not None and record.status == "failed" and record.sha256 is None
    assert record.error and "leads outside the configured folders" in record.error
    assert "evil.jpg" not in json.dumps(client.get("/api/images?limit=500").json)
    assert url_path(library.outside) not in client.get("/?sort=name").get_data(as_text=True)


def test_hostile_file_name_is_shown_as_text(client: FlaskClient, library: Library) -> None:
    grid = client.get(f"/?sort=name&folder={library.root}")
    for response in (grid, client.get(f"/image/{url_path(library.root / XSS_PATH)}")):
        page = response.get_data(as_text=True)
        assert response.status_code == 200
        assert "<script>alert(1)" not in page
        assert "&lt;script&gt;alert(1)&lt;" in page


def test_security_headers_and_host_check(client: FlaskClient) -> None:
    response = client.get("/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    rebound = client.get("/api/tags", headers={"Host": "attacker.example"})
    assert rebound.status_code == 400 and rebound.is_json


def test_errors_are_json_and_never_leak_a_traceback(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(Index, "browse", broken)
    api = client.get("/api/images")
    assert api.status_code == 500 and api.is_json and set(api.json) == {"error", "status"}
    page = client.get("/")
    assert page.status_code == 500
    for response in (api, page):
        assert b"Traceback" not in response.data and b"secret internal detail" not in response.data
    assert "secret internal detail" in caplog.text  # the log keeps it
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404 and set(missing.json) == {"error", "status"}
    assert client.post("/api/images").status_code == 405 and client.post("/api/images").is_json


# -- explanations ---------------------------------------------------------------------------


def test_explain_api_png_layer_and_json(client: FlaskClient, library: Library) -> None:
    coffee = url_path(library.root / "2024" / "trip" / "coffee.jpg")
    png = client.get(f"/api/images/{coffee}/explain")
    assert png.status_code == 200 and png.mimetype == "image/png"
    with Image.open(io.BytesIO(png.data)) as img:
        assert img.size == (600, 400) and img.mode == "RGB"
    layer = client.get(f"/api/images/{coffee}/explain?tag=咖啡&format=layer&size=300")
    assert layer.status_code == 200
    with Image.open(io.BytesIO(layer.data)) as img:
        assert img.size == (300, 200) and img.mode == "RGBA"
    data = client.get(f"/api/images/{coffee}/explain?tag=espresso&format=json").json
    assert data["label"] == "espresso" and data["class_id"] == 967 and data["path"].endswith("coffee.jpg")
    assert len(data["map"]) == 32 and len(data["map"][0]) == 48
    by_id = client.get(f"/api/images/{coffee}/explain?tag=967&format=json").json
    assert by_id["map"] == data["map"]
    top = client.get(f"/api/images/{coffee}/explain?format=json").json
    assert top["label"] == tags_of(client, library.root / "2024" / "trip" / "coffee.jpg")[0]["label"]


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("format=gif", 400, "format must be one of png, layer, json"),
        ("tag=no+such+thing", 400, "no ImageNet class is called"),
        ("tag=1000", 400, "no ImageNet class is called"),
        ("tag=%00", 400, "printable"),
        (f"tag={'x' * 201}", 400, "at most 200"),
        ("size=big", 400, "size must be a whole number from 16 to 1024"),
        ("size=١٠٠", 400, "size must be a whole number"),
        ("size=99999", 400, "size must be a whole number"),
    ],
)
def test_explain_api_refusals_are_json(client: FlaskClient, library: Library, query: str, status: int,
                                       message: str) -> None:
    response = client.get(f"/api/images/{url_path(library.root / 'rocket.jpg')}/explain?{query}")
    assert response.status_code == status and response.is_json and message in response.json["error"]


def test_explain_api_paths_and_bad_files(client: FlaskClient, library: Library, tmp_path: Path) -> None:
    assert client.get(f"/api/images/{url_path(library.root / 'nope.jpg')}/explain").status_code == 404
    outside = client.get(f"/api/images/{url_path(library.outside / 'secret.jpg')}/explain")
    assert outside.status_code == 403 and outside.is_json
    evil = client.get(f"/api/images/{url_path(library.root / 'evil.jpg')}/explain")  # a symlink leading out
    assert evil.status_code in (403, 404) and evil.is_json and b"secret" not in evil.data
    broken = client.get(f"/api/images/{url_path(library.root / 'broken.jpg')}/explain")
    assert broken.status_code == 422 and "broken.jpg" in broken.json["error"]
    rotated = client.get(f"/api/images/{url_path(library.root / 'rotated.jpg')}/explain?format=json").json
    assert (rotated["width"], rotated["height"]) == (200, 300) and len(rotated["map"]) == 48


def test_explain_a_learned_tag(tmp_path: Path, sample_jpegs: list[Path], lite0: Classifier, weights_dir: Path) -> None:
    from click.testing import CliRunner

    from tagger.cli import cli

    library = tmp_path / "library"
    library.mkdir()
    photos = {p.stem: p for p in sample_jpegs}
    for name in ("coffee", "rocket", "chelsea"):
        shutil.copy(photos[name], library / f"{name}.jpg")
    config_file = scanned_config(library, lite0, weights_dir)
    taught = CliRunner().invoke(cli, ["--config", str(config_file), "learn", "mycup", str(library / "coffee.jpg"),
                                      "--not", str(library / "rocket.jpg")])
    assert taught.exit_code == 0, taught.output
    app = make_app(load_config(config_file), lite0)
    try:
        client = app.test_client()
        coffee = url_path(library / "coffee.jpg")
        assert "tag=learned/mycup" in client.get(f"/image/{coffee}").get_data(as_text=True)
        data = client.get(f"/api/images/{coffee}/explain?tag=learned/mycup&format=json").json
        assert data["label"] == "learned/mycup" and data["class_id"] is None and data["score"] > 0.5
        unknown = client.get(f"/api/images/{coffee}/explain?tag=learned/nothing")
        assert unknown.status_code == 400 and "no learned tag 'nothing'" in unknown.json["error"]
    finally:
        app.extensions["tagger"].close()


def test_image_page_has_a_why_per_guess_and_keyword(client: FlaskClient, library: Library) -> None:
    coffee = library.root / "2024" / "trip" / "coffee.jpg"
    page = client.get(f"/image/{url_path(coffee)}").get_data(as_text=True)
    assert page.count('class="why"') >= 6  # 5 guesses and at least one keyword
    assert f"/api/images/{url_path(coffee)}/explain?tag=967" in page
    assert 'data-seen="' in page and 'id="heat-opacity"' in page and "not seen by the model" in page
    assert "/static/explain.js" in page and "<script>" not in page
    script = client.get("/static/explain.js")
    assert script.status_code == 200 and b"format" in script.data


# -- manual check ---------------------------------------------------------------------------


def snapshot(library: Library) -> dict[str, int]:
    index = library.config.index
    files = {str(p): p.stat().st_mtime_ns for p in library.root.rglob("*") if not p.is_symlink()}
    wal = Path(f"{index}-wal")
    return {**files, "index": index.stat().st_size, "wal": wal.stat().st_size if wal.exists() else -1}


def test_classify_api_several_files_writes_nothing(
    client: FlaskClient, library: Library, sample_jpegs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import werkzeug.formparser

    def no_temp_files(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", no_temp_files)
    before = snapshot(library)
    photos = {p.stem: p for p in sample_jpegs}
    big = io.BytesIO()
    with Image.open(photos["chelsea"]) as img:
        img.resize((900, 700)).save(big, "PNG")  # > 500 KB: werkzeug would spool it to disk
    assert big.tell() > 500 * 1024
    coffee = ("coffee.jpg", photos["coffee"].read_bytes())
    response = upload(client, "/api/classify", coffee, ("cat.png", big.getvalue()))
    assert response.status_code == 200, response.json
    first, second = response.json["results"]
    assert first["file"] == "coffee.jpg" and first["tags"][0]["label"] == "espresso"
    assert len(first["tags"]) == 3 and {"label_zh", "score", "class_id", "wnid"} <= set(first["tags"][0])
    assert "cat" in second["tags"][0]["label"] and response.json["model"] == "efficientnet-lite0"
    assert snapshot(library) == before


def test_check_page_without_script(client: FlaskClient, sample_jpegs: list[Path]) -> None:
    page = client.get("/check").get_data(as_text=True)
    assert 'type="file"' in page and "Drop images here" in page
    coffee = next(p for p in sample_jpegs if p.stem == "coffee")
    response = upload(client, "/check", ("<b>coffee</b>.jpg", coffee.read_bytes()))
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and page.count('optimum="1" value=') == 3  # the template's has no value
    assert "espresso" in page
    assert "&lt;b&gt;coffee&lt;/b&gt;.jpg" in page


def test_upload_too_large_is_413_json(client: FlaskClient) -> None:
    response = upload(client, "/api/classify", ("big.jpg", b"\xff" * (2 * 1024 * 1024)))
    assert response.status_code == 413 and response.is_json


def test_decompression_bomb_and_non_images_are_refused(client: FlaskClient) -> None:
    bomb = io.BytesIO()
    Image.new("1", (3000, 3000)).save(bomb, "PNG")  # 9 megapixels in a few kilobytes; the limit is 4
    assert bomb.tell() < 10_000
    response = upload(client, "/api/classify", ("bomb.png", bomb.getvalue()))
    assert response.status_code == 422 and "too large" in response.json["results"][0]["error"]
    response = upload(client, "/api/classify", ("page.jpg", b"<html>not an image"))
    assert response.status_code == 422 and "not an image" in response.json["results"][0]["error"]
    response = client.post("/api/classify", data={})
    assert response.status_code == 400 and response.is_json
    assert client.post("/check", data={}).status_code == 400


# -- access token ---------------------------------------------------------------------------


def test_token_guards_everything_but_health(library: Library, lite0: Classifier) -> None:
    app = make_app(library.config, lite0, token=TOKEN)
    try:
        client = app.test_client()
        assert client.get("/health").status_code == 200
        missing = client.get("/api/images")
        assert missing.status_code == 401 and missing.is_json and "Bearer" in missing.headers["WWW-Authenticate"]
        assert client.get("/api/images", headers={"Authorization": "Bearer wrong-token-of-length"}).status_code == 401
        assert client.get("/api/images", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        page = client.get("/?tag=espresso")
        assert page.status_code == 401 and 'name="token"' in page.get_data(as_text=True)
        for url in ("/static/style.css", f"/thumb/{'0' * 64}", "/tags", "/check"):
            assert client.get(url).status_code == 401
        assert client.post("/login", data={"token": "nope", "next": "/"}).status_code == 401
        signed_in = client.post("/login", data={"token": TOKEN, "next": "/?tag=espresso"})
        assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/?tag=espresso"
        assert "HttpOnly" in signed_in.headers["Set-Cookie"]
        assert client.get("/?tag=espresso").status_code == 200
        offsite = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert offsite.headers["Location"] == "/"
        assert client.get("/login").status_code == 200  # signed in: the form, no complaint
        assert client.post("/logout").status_code == 303
        assert client.get("/").status_code == 401
    finally:
        app.extensions["tagger"].close()


def test_health_without_an_index(library: Library, tmp_path: Path) -> None:
    app = make_app(dataclasses.replace(library.config, index=tmp_path / "none.sqlite"), None)
    response = app.test_client().get("/health")
    assert response.status_code == 503 and response.json["status"] == "unavailable"
    assert app.test_client().get("/api/images").status_code == 503


# -- the store's viewer reads: every plan gives the same rows -------------------------------


def synthetic_store(path: Path) -> tuple[Index, list[tuple[str, int, list[Tag]]]]:
    """300 files in nested folders, 5 tags each from 12 classes, some duplicate contents."""
    rng = random.Random(4)
    store = Index.open(path)
    files = []
    with store.transaction():
        for i in range(300):
            classes = rng.sample(range(12), 5)
            scores = sorted((rng.random() for _ in classes), reverse=True)
            tags = [Tag(c, f"n{c:08d}", f"class {c}", f"类{c}", s / 2) for c, s in zip(classes, scores)]
            sha = f"{i % 280:064x}"  # the last 20 share content with others
            if i < 280:
                store.save_image(ImageFacts(sha, 1, 10, 10), "m", "w", tags)
            folder = f"/lib/{'ab'[i % 2]}/{i % 7}"
            mtime = rng.randrange(10) * 10**9  # many equal times: ties must not lose or repeat a file
            store.save_file(f"{folder}/img{i:03d}.jpg", sha, 1, mtime, None)
            files.append((f"{folder}/img{i:03d}.jpg", mtime, tags if i < 280 else files[i % 280][2]))
    return store, files


def expected(files: list[tuple[str, int, list[Tag]]], listing: Listing) -> list[str]:
    rows = []
    for path, mtime, tags in files:
        if listing.folder and not path.startswith(listing.folder + "/"):
            continue
        if listing.groups:
            shown = next((t for t in tags if t.class_id in listing.groups[0]), None)
            passing = {t.class_id for t in tags if t.score >= listing.min_score}
            others = all(passing & set(group) for group in listing.groups[1:])
            if shown is None or shown.score < listing.min_score or not others:
                continue
        else:
            shown = tags[0]
            if shown.score < listing.min_score:
                continue
        rows.append((path, mtime, shown.score))
    keys = {"newest": lambda r: (r[1], r[0]), "oldest": lambda r: (r[1], r[0]), "score": lambda r: (r[2], r[0])}
    key = keys.get(listing.sort, lambda r: (r[0], r[0]))
    return [r[0] for r in sorted(rows, key=key, reverse=listing.sort in ("newest", "score"))]


@pytest.mark.parametrize("few", [0, 10**9])
@pytest.mark.parametrize("folder_keys_first", [0, 10**9])
def test_every_plan_pages_through_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few: int, folder_keys_first: int
) -> None:
    monkeypatch.setattr(search_module, "FEW_ROWS", few)
    monkeypatch.setattr(search_module, "FOLDER_KEYS_FIRST", folder_keys_first)
    store, files = synthetic_store(tmp_path / "s.sqlite")
    try:
        listings = [
            Listing(sort=sort, folder=folder, groups=groups, min_score=score)
            for sort in ("newest", "oldest", "score", "name")
            for folder in (None, "/lib/a", "/lib/b/3")
            for groups, score in [((), 0.0), ((), 0.2), (((3,),), 0.05), (((1, 2, 5),), 0.1), (((1, 2), (7, 8)), 0.0)]
        ]
        for listing in listings:
            seen: list[str] = []
            after = None
            while True:
                page = store.browse(listing, 7, after)
                seen += [item.path for item in page]
                if len(page) < 7:
                    break
                after = page[-1].key
            assert seen == expected(files, listing), listing
            if len(seen) > 2:
                here = store.browse(listing, 1, only=seen[1])[0]
                assert [i.path for i in store.browse(listing, 1, here.key, backwards=True)] == [seen[0]]
                assert [i.path for i in store.browse(listing, 1, here.key)] == [seen[2]]
    finally:
        store.close()


def recount(store: Index, min_score: float) -> dict[int, int]:
    """What the counts must be: every tagged file joined with its tags, as a user would count."""
    rows = store.conn.execute(
        """SELECT t.class_id, COUNT(*) FROM files f JOIN tags t ON t.sha256 = f.sha256
           WHERE f.status = 'tagged' AND t.score >= ? GROUP BY t.class_id""",
        (min_score,),
    )
    return dict(rows.fetchall())


def test_tag_counts_follow_every_write(tmp_path: Path) -> None:
    store, _ = synthetic_store(tmp_path / "s.sqlite")
    try:
        def counted(min_score: float) -> dict[int, int]:
            return {c.class_id: c.count for c in store.tag_counts(min_score)}

        for min_score in (0.0, 0.05, 0.25):
            assert counted(min_score) == recount(store, min_score)
        new_tags = [Tag(c, f"n{c:08d}", f"class {c}", f"类{c}", s) for c, s in [(20, 0.9), (3, 0.3), (21, 0.05)]]
        with store.transaction():
            store.save_image(ImageFacts(f"{5:064x}", 1, 10, 10), "other", "w", new_tags)  # re-tagged content, 2 files
            store.save_file("/lib/a/0/img000.jpg", f"{7:064x}", 1, 5, None)  # a path now holds other content
            store.save_failure("/lib/b/1/img001.jpg", None, 1, 5, "broken now")
            store.delete_files(["/lib/a/2/img002.jpg", "/nowhere.jpg"])
            store.delete_tree("/lib/b/3")
            store.move_file("/lib/a/4/img004.jpg", "/lib/a/6/img006.jpg")  # onto an indexed file
            store.move_tree("/lib/b/5", "/lib/c")
            store.save_file("/lib/new.jpg", f"{9:064x}", 1, 5, None)
        for min_score in (0.0, 0.05, 0.25):
            assert counted(min_score) == recount(store, min_score)
        assert store.tagged_count() == store.counts()[0]
    finally:
        store.close()
