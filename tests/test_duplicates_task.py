"""The duplicates task of the viewer: groups computed in the background and kept, pages and
totals, the copy suggested to keep, and "keep this, move the rest to the trash", on real
photos, the real model, real SQLite and a real browser."""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image

from tagger.config import load_config
from tagger.engine.classify import Classifier
from tagger.index import Index
from tagger.index.duplicates import CopyFacts
from tagger.library.trash import TRASH_FOLDER
from tagger.vectors import duplicates as vector_duplicates
from tagger.vectors.duplicates import Duplicates, keep_order, make_group
from tagger.web import duplicates as web_duplicates

from conftest import scan_once

from test_browser import ARTIFACTS, WAIT_SECONDS, serving
from test_browser import browser as chromium_browser  # noqa: F401 - test_browser's `browser` fixture
from test_web import make_app, scanned_config

LONG_FOLDER = "exports-" + "a-very-long-folder-name-without-spaces-" * 4
LONG_NAME = "coffee-" + "resized-for-the-web-" * 5 + ".png"
OLD = 1_500_000_000  # 2017: the backup copy is older


def build_library(root: Path, sample_jpegs: list[Path]) -> Path:
    """The sample photos, and three kinds of copies: a smaller PNG of the coffee (in a folder and
    under a name longer than any phone is wide), a PNG of the cat at the same size, and the same
    bytes of the astronaut in an older backup."""
    lib = root / "library"
    lib.mkdir()
    for photo in sample_jpegs:
        shutil.copy(photo, lib / photo.name)
    (lib / LONG_FOLDER).mkdir()
    with Image.open(lib / "coffee.jpg") as image:
        image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS).save(lib / LONG_FOLDER / LONG_NAME)
    with Image.open(lib / "chelsea.jpg") as image:
        image.save(lib / "chelsea re-export.png")
    (lib / "backup").mkdir()
    shutil.copy(lib / "astronaut.jpg", lib / "backup" / "astronaut.jpg")
    os.utime(lib / "backup" / "astronaut.jpg", (OLD, OLD))
    return lib


@pytest.fixture
def library(tmp_path: Path, sample_jpegs: list[Path]) -> Path:
    return build_library(tmp_path, sample_jpegs)


@pytest.fixture
def config_file(library: Path, lite0: Classifier, weights_dir: Path) -> Path:
    return scanned_config(library, lite0, weights_dir, sidecar={"enabled": True}, xmp={"enabled": True})


@pytest.fixture
def client(config_file: Path, lite0: Classifier) -> Iterator[FlaskClient]:
    app = make_app(load_config(config_file), lite0)
    yield app.test_client()
    app.extensions["tagger"].close()


def form_token(client: FlaskClient) -> str:
    """The form token the duplicates page gave this browser (its cookie)."""
    if client.get_cookie("tagger_csrf") is None:
        client.get("/duplicates")
    cookie = client.get_cookie("tagger_csrf")
    assert cookie is not None
    return cookie.value


def api_groups(client: FlaskClient) -> dict[str, Any]:
    answer = client.get("/api/duplicates")
    assert answer.status_code == 200, answer.data
    body: dict[str, Any] = answer.get_json()
    return body


def group_with(body: dict[str, Any], name: str) -> dict[str, Any]:
    found = [g for g in body["details"] if any(c["name"] == name for c in g["copies"])]
    assert len(found) == 1, (name, body["groups"])
    return found[0]


def test_groups_totals_and_the_copy_suggested_to_keep(client: FlaskClient, library: Path) -> None:
    body = api_groups(client)
    assert body["state"] == "ready" and body["page"] == 1 and body["next"] is None
    coffee = group_with(body, "coffee.jpg")
    assert coffee["keep"] == str(library / "coffee.jpg")  # the most pixels
    cat = group_with(body, "chelsea.jpg")
    names = [c["name"] for c in cat["copies"]]
    assert names[0] == "chelsea re-export.png"  # `groups` stay largest first (pixels, then bytes)
    assert cat["keep"] == str(library / "chelsea.jpg")  # but at the same pixels the camera's JPEG is kept
    astronaut = group_with(body, "astronaut.jpg")
    assert astronaut["keep"] == str(library / "backup" / "astronaut.jpg")  # same bytes: the oldest
    for group in body["details"]:
        copies = group["copies"]
        assert sum(c["suggested"] for c in copies) == 1
        assert group["freed_bytes"] == sum(c["size"] for c in copies if not c["suggested"])
        for c in copies:
            assert c["folder"] == os.path.dirname(c["path"]) and c["width"] > 0 and c["mtime_ns"] > 0
            assert c["format"] in ("JPEG", "PNG")
    assert [list(map(lambda c: c["path"], g["copies"])) for g in body["details"]] == body["groups"]
    totals = body["totals"]
    assert totals == {"groups": len(body["groups"]), "files": sum(len(g) for g in body["groups"]),
                      "freed_bytes": sum(g["freed_bytes"] for g in body["details"])}
    assert totals["groups"] >= 3
    freed = [g["freed_bytes"] for g in body["details"]]
    assert freed == sorted(freed, reverse=True)  # most space to free first

    page = client.get("/duplicates")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Suggested to keep" in text and LONG_NAME in text and LONG_FOLDER in text
    assert f'"dup-total">{totals["groups"]}<' in text and f'"dup-total">{totals["files"]}<' in text
    assert "Keep this, move the rest to the trash" in text


def test_the_suggestion_rule() -> None:
    def copy(path: str, width: int, mtime: int, size: int = 1000) -> CopyFacts:
        return CopyFacts(path, path, size, mtime, width, width)

    raw, jpeg = copy("/p/IMG_1.CR2", 100, 5), copy("/p/IMG_1.jpg", 100, 1)
    png, big_png = copy("/p/a.png", 100, 0, 5000), copy("/p/b.png", 101, 9)
    assert min([jpeg, png], key=keep_order) is jpeg  # same pixels: the original format, though older and smaller
    assert min([jpeg, raw], key=keep_order) is raw  # RAW before JPEG
    assert min([jpeg, raw, big_png], key=keep_order) is big_png  # pixels first
    older = copy("/p/z.jpg", 100, 0)
    assert min([jpeg, older], key=keep_order) is older
    group = make_group([png, jpeg])
    assert group is not None and group.paths == ("/p/a.png", "/p/IMG_1.jpg") and group.keep == 1
    assert group.freed == 5000
    assert make_group([png]) is None


def test_pages_and_bad_parameters(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    everything = api_groups(client)
    count = everything["totals"]["groups"]
    monkeypatch.setattr(web_duplicates, "PAGE_SIZE", 1)
    seen = []
    for number in range(1, count + 1):
        page = client.get(f"/duplicates?page={number}")
        assert page.status_code == 200
        assert f"Page {number} of {count}" in page.get_data(as_text=True)
        one = client.get(f"/api/duplicates?page={number}&limit=1").get_json()
        seen += one["groups"]
        assert (one["next"] is None) == (number == count)
    assert seen == everything["groups"]
    two = client.get("/api/duplicates?limit=2").get_json()
    assert two["groups"] == everything["groups"][:2] and two["next"] == "/api/duplicates?page=2&limit=2"
    for bad in ("0", "-1", "abc", "1.5", "1e3", "²", "99999999999999999999", "%00"):
        for url in (f"/duplicates?page={bad}", f"/api/duplicates?page={bad}", f"/api/duplicates?limit={bad}"):
            answer = client.get(url)
            assert answer.status_code == 400, url
            if url.startswith("/api/"):
                assert "must be a whole number" in answer.get_json()["error"], answer.data
    assert client.get("/api/duplicates?limit=501").status_code == 400
    assert client.get(f"/duplicates?page={count + 1}").status_code == 404


def test_a_request_while_computing_answers_at_once(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()
    real = vector_duplicates.find_groups

    def slow(store: Index, progress: Any = None) -> Duplicates:
        started.set()
        if progress is not None:
            progress(0.42)
        release.wait(30)
        return real(store, progress)

    monkeypatch.setattr(web_duplicates, "find_groups", slow)
    monkeypatch.setattr(web_duplicates, "WAIT_SECONDS", 0.2)
    try:
        began = time.monotonic()
        api = client.get("/api/duplicates")
        assert api.status_code == 202 and api.headers["Retry-After"] == "3"
        assert api.get_json()["state"] == "computing" and started.is_set()
        page = client.get("/duplicates")
        assert page.status_code == 202 and b"being computed" in page.data and b"42%" in page.data
        assert time.monotonic() - began < 5
        assert [t.name for t in threading.enumerate()].count("duplicates") == 1  # one computation at a time
    finally:
        release.set()
    deadline = time.monotonic() + 30
    while client.get("/api/duplicates").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_computed_once_per_index_state(client: FlaskClient, monkeypatch: pytest.MonkeyPatch, config_file: Path) -> None:
    calls = []
    real = vector_duplicates.find_groups

    def counted(store: Index, progress: Any = None) -> Duplicates:
        calls.append(1)
        return real(store, progress)

    monkeypatch.setattr(web_duplicates, "find_groups", counted)
    monkeypatch.setattr(web_duplicates, "CHECK_SECONDS", 0.0)
    for _ in range(3):
        assert client.get("/api/duplicates").status_code == 200
    assert len(calls) == 1
    with Index.open(load_config(config_file).index) as index, index.transaction():  # the index changes
        index.conn.execute("UPDATE files SET updated_at = 'z' WHERE path = (SELECT MIN(path) FROM files)")
    client.get("/api/duplicates")
    deadline = time.monotonic() + 30
    while len(calls) < 2 or client.get("/api/duplicates").get_json()["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def keep_form(client: FlaskClient, keep: str, trash: list[str], **extra: str) -> Any:
    data: dict[str, Any] = {"csrf": form_token(client), "keep": keep, "trash": trash, "page": "1", **extra}
    return client.post("/duplicates/keep", data=data)


def test_keep_one_and_move_the_rest_to_the_trash(
    client: FlaskClient, library: Path, config_file: Path, lite0: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_duplicates, "CHECK_SECONDS", 0.0)  # a rescan is seen at the next request
    body = api_groups(client)
    coffee = group_with(body, "coffee.jpg")
    keep = coffee["keep"]
    others = [c["path"] for c in coffee["copies"] if c["path"] != keep]
    small = library / LONG_FOLDER / LONG_NAME
    assert str(small) in others
    json_sidecar, xmp = Path(f"{small}.tags.json"), Path(f"{small}.xmp")
    assert json_sidecar.exists() and xmp.exists()

    # Without the form token: refused, nothing moved.
    refused = client.post("/duplicates/keep", data={"keep": keep, "trash": others, "confirmed": "yes"})
    assert refused.status_code == 403 and small.exists()
    # Without confirmation: a page that asks, naming the files.
    asked = keep_form(client, keep, others)
    assert asked.status_code == 200 and b"Yes, move them to the trash" in asked.data and LONG_NAME.encode() in asked.data
    assert small.exists()
    # A path of another group is refused by name; the rest of the group still goes.
    stranger = str(library / "rocket.jpg")
    done = keep_form(client, keep, [*others, stranger], confirmed="yes")
    assert done.status_code == 303
    shown = client.get(done.headers["Location"]).get_data(as_text=True)
    assert "Moved 1 file" in shown and stranger in shown and "not in this group" in shown
    assert (library / "rocket.jpg").exists() and Path(keep).exists()
    trashed = next((library / TRASH_FOLDER).glob(f"*/{LONG_FOLDER}/{LONG_NAME}"))
    assert not small.exists() and trashed.is_file()
    assert Path(f"{trashed}.tags.json").is_file() and Path(f"{trashed}.xmp").is_file()
    assert not json_sidecar.exists() and not xmp.exists()
    with Index.open(load_config(config_file).index, readonly=True) as index:
        assert index.file_record(str(small)) is None
    after = api_groups(client)
    assert all(str(small) not in g for g in after["groups"])
    assert after["totals"]["groups"] == body["totals"]["groups"] - 1

    # The same name again: never overwritten, the newcomer gets a suffix.
    small.parent.mkdir(exist_ok=True)
    with Image.open(keep) as image:
        image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS).save(small)
    rescan(config_file, lite0)
    again = group_with(api_groups_fresh(client), "coffee.jpg")
    done = keep_form(client, again["keep"], [c["path"] for c in again["copies"] if not c["suggested"]], confirmed="yes")
    assert done.status_code == 303
    assert sorted(p.name for p in trashed.parent.glob("*.png")) == sorted([LONG_NAME, LONG_NAME[:-4] + " (2).png"])
    assert trashed.is_file()

    # A rescan does not take the trash back into the index.
    rescan(config_file, lite0)
    with Index.open(load_config(config_file).index, readonly=True) as index:
        assert not [p for p in index.paths_under(str(library)) if TRASH_FOLDER in p]


def api_groups_fresh(client: FlaskClient) -> dict[str, Any]:
    """The groups once they are computed again after a change of the index."""
    deadline = time.monotonic() + 30
    client.get("/api/duplicates")  # sees the change, starts computing
    while True:
        answer = client.get("/api/duplicates")
        if answer.status_code == 200 and answer.get_json()["state"] == "ready":
            body: dict[str, Any] = answer.get_json()
            return body
        assert time.monotonic() < deadline
        time.sleep(0.2)


def rescan(config_file: Path, classifier: Classifier) -> None:
    config = load_config(config_file)
    scan_once(config, classifier)


def test_refusals_name_the_file_and_the_reason(
    client: FlaskClient, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = api_groups(client)
    cat = group_with(body, "chelsea.jpg")
    keep, png = str(library / "chelsea.jpg"), str(library / "chelsea re-export.png")
    # Not in any group.
    answer = keep_form(client, str(library / "rocket.jpg"), [png], confirmed="yes")
    assert answer.status_code == 400 and b"not in a group of copies" in answer.data
    # The copy to keep changed since it was indexed: nothing moves.
    os.utime(keep, (OLD, OLD))
    answer = keep_form(client, keep, [png], confirmed="yes")
    assert answer.status_code == 409 and b"nothing was moved" in answer.data and Path(png).exists()
    # A copy to move changed: refused by name, with the reason.
    astronaut = group_with(body, "astronaut.jpg")
    old, new = astronaut["keep"], str(library / "astronaut.jpg")
    Path(new).write_bytes(Path(new).read_bytes() + b"\0")
    done = keep_form(client, old, [new], confirmed="yes")
    shown = client.get(done.headers["Location"]).get_data(as_text=True)
    assert new in shown and "changed on disk since it was indexed" in shown and Path(new).exists()
    # A read-only library: 503, saying so.
    monkeypatch.setattr(web_duplicates, "writable", lambda config, path: False)
    answer = keep_form(client, cat["copies"][0]["path"], [cat["copies"][1]["path"]], confirmed="yes")
    assert answer.status_code == 503 and b"read-only" in answer.data


def test_the_trash_is_skipped_by_scan_and_watcher(tmp_path: Path) -> None:
    from tagger.daemon.watch import is_candidate
    from tagger.fileio import in_skipped_folder

    inside = tmp_path / "photos" / TRASH_FOLDER / "2024-01-01" / "a.jpg"
    assert in_skipped_folder(inside) and not is_candidate(inside)


def test_keep_and_trash_in_a_real_browser(
    tmp_path: Path, sample_jpegs: list[Path], lite0: Classifier, weights_dir: Path, request: pytest.FixtureRequest
) -> None:
    browser = request.getfixturevalue("chromium_browser")  # test_browser's headless chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    import axe_selenium_python

    library = build_library(tmp_path, sample_jpegs)
    with serving(library, lite0, weights_dir) as address:
        browser.set_window_size(390, 844)
        wait = WebDriverWait(browser, WAIT_SECONDS)
        browser.get(address + "/duplicates")
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, ".dup-group")))
        width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width
        groups = len(browser.find_elements(By.CSS_SELECTOR, ".dup-group"))
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "browser-duplicates-390px.png"))
        axe = Path(axe_selenium_python.__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
        browser.execute_script(axe.read_text())
        result = browser.execute_async_script("const done = arguments[0]; axe.run().then(done)")
        assert result["violations"] == [], [(v["id"], v["nodes"][0]["html"]) for v in result["violations"]]
        group = next(g for g in browser.find_elements(By.CSS_SELECTOR, ".dup-group") if LONG_NAME in g.text)
        button = group.find_element(By.CSS_SELECTOR, ".dup-copy.suggested form.dup-keep button")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()
        alert = wait.until(ready.alert_is_present())
        assert "move the other 1 copy" in alert.text
        alert.accept()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, ".dup-outcome")))
        assert "Moved 1 file" in browser.find_element(By.CSS_SELECTOR, ".dup-outcome").text
        assert len(browser.find_elements(By.CSS_SELECTOR, ".dup-group")) == groups - 1
        assert not [g for g in browser.find_elements(By.CSS_SELECTOR, ".dup-group") if LONG_NAME in g.text]
        assert not (library / LONG_FOLDER / LONG_NAME).exists()
        width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width
