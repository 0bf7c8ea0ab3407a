"""The grid page's server side: tiles (sizes, aspect, cache, removal with their photo), copies
shown once with a count, the folder view's count, the timeline's jumps, bulk keyword edits,
and the headers that let Back restore a page."""
from __future__ import annotations

import io
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from tagger.config import load_config
from tagger.engine.classify import Classifier
from tagger.index import Index
from tagger.library.thumbcache import thumbnail_folder
from tagger.web.context import CSRF_COOKIE

from conftest import scan_once

from test_web import make_app, scanned_config

TOKEN = "c" * 32


@pytest.fixture
def library(tmp_path: Path, sample_jpegs: list[Path]) -> Path:
    """The shipped photos, the cat three times over (two in a folder "extras"), and a 4:1 panorama."""
    lib = tmp_path / "library"
    (lib / "extras").mkdir(parents=True)
    for photo in sample_jpegs:
        shutil.copy(photo, lib / photo.name)
    cat = next(p for p in sample_jpegs if p.stem == "chelsea")
    shutil.copy(cat, lib / "extras" / "cat-copy.jpg")
    shutil.copy(cat, lib / "extras" / "cat-copy-2.jpg")
    with Image.open(next(p for p in sample_jpegs if p.stem == "rocket")) as rocket:
        rocket.convert("RGB").resize((2000, 500)).save(lib / "panorama.jpg", quality=90)
    return lib


@pytest.fixture
def client_for(library: Path, lite0: Classifier, weights_dir: Path):  # type: ignore[no-untyped-def]
    config_file = scanned_config(library, lite0, weights_dir)

    def client(**web: object):  # type: ignore[no-untyped-def]
        app = make_app(load_config(config_file), lite0, **web)
        made = app.test_client()
        made.set_cookie(CSRF_COOKIE, TOKEN)
        return made

    return client


def names(html: str) -> list[str]:
    return re.findall(r'data-name="([^"]+)"', html)


def test_copies_are_one_tile_with_their_count_in_browsing_and_in_search(client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for()
    page = client.get("/").get_data(as_text=True)
    cats = [n for n in names(page) if n in ("chelsea.jpg", "cat-copy.jpg", "cat-copy-2.jpg")]
    assert len(cats) == 1, cats
    assert "×3" in page
    found = client.get("/?q=tag:cat").get_data(as_text=True)
    assert len([n for n in names(found) if n in ("chelsea.jpg", "cat-copy.jpg", "cat-copy-2.jpg")]) == 1


def test_the_folder_view_counts_the_folder_and_lists_the_library_folders(client_for, library: Path) -> None:  # type: ignore[no-untyped-def]
    client = client_for()
    top = client.get("/").get_data(as_text=True)
    assert "9 tagged images" in top  # the 6 photos, 2 copies and the panorama
    assert "extras" in top  # the folder menu offers the library's folders, not only its root
    inside = client.get(f"/?folder={library / 'extras'}").get_data(as_text=True)
    assert "2 tagged images" in inside and "9 tagged images" not in inside


def test_tiles_come_in_two_sizes_keep_their_aspect_and_are_made_once(client_for, library: Path) -> None:  # type: ignore[no-untyped-def]
    client = client_for()
    page = client.get("/").get_data(as_text=True)
    srcset = re.search(r'srcset="([^"]+)"', page)
    assert srcset is not None and srcset.group(1).count("w,") == 1 and " 256w" in srcset.group(1) and " 720w" in srcset.group(1)
    with Index.open(library.parent / "index.sqlite", readonly=True) as store:
        panorama = store.file_record(str(library / "panorama.jpg"))
    assert panorama is not None and panorama.sha256
    large = client.get(f"/thumb/{panorama.sha256}/720")
    assert large.status_code == 200 and "immutable" in large.headers["Cache-Control"]
    with Image.open(io.BytesIO(large.data)) as tile:
        assert min(tile.size) == 500  # the photo's own short side (no upscaling), not 720
        assert tile.size[0] / tile.size[1] == pytest.approx(2000 / 500, rel=0.01)  # its aspect kept (4:1 at most)
    small = client.get(f"/thumb/{panorama.sha256}/256")
    with Image.open(io.BytesIO(small.data)) as tile:
        assert min(tile.size) == 256 and tile.size[0] == 1024
    cached = sorted(p.name for p in thumbnail_folder(library.parent / "index.sqlite").rglob(f"{panorama.sha256}-*"))
    assert cached == [f"{panorama.sha256}-s256.jpg", f"{panorama.sha256}-s720.jpg"]
    assert client.get(f"/thumb/{panorama.sha256}/300").status_code == 404  # only the sizes the grid asks for
    assert client.get("/thumb/not-a-hash/256").status_code == 404


def test_a_photos_cached_pictures_go_with_its_last_file(client_for, library: Path, lite0: Classifier) -> None:  # type: ignore[no-untyped-def]
    client = client_for()
    index = library.parent / "index.sqlite"
    with Index.open(index, readonly=True) as store:
        cat = store.file_record(str(library / "chelsea.jpg"))
        coffee = store.file_record(str(library / "coffee.jpg"))
    assert cat is not None and coffee is not None and cat.sha256 and coffee.sha256
    for sha in (cat.sha256, coffee.sha256):
        assert client.get(f"/thumb/{sha}/256").status_code == 200
        assert client.get(f"/preview/{sha}").status_code == 200
    folder = thumbnail_folder(index)
    (library / "coffee.jpg").unlink()
    (library / "chelsea.jpg").unlink()  # two copies of the cat remain in extras/
    rescan(library.parent / "tagger.yaml", lite0)
    assert not list(folder.rglob(f"{coffee.sha256}-*"))  # its last file is gone: so are its pictures
    assert len(list(folder.rglob(f"{cat.sha256}-*"))) == 2  # still held by its copies
    shutil.rmtree(library / "extras")
    rescan(library.parent / "tagger.yaml", lite0)
    assert not list(folder.rglob(f"{cat.sha256}-*"))
    with Index.open(index, readonly=True) as store:  # an edited photo: its former content's pictures go too
        rocket = store.file_record(str(library / "rocket.jpg"))
    assert rocket is not None and rocket.sha256
    assert client.get(f"/thumb/{rocket.sha256}/256").status_code == 200
    with Image.open(library / "rocket.jpg") as photo:
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(library / "rocket.jpg", quality=85)
    rescan(library.parent / "tagger.yaml", lite0)
    assert not list(folder.rglob(f"{rocket.sha256}-*"))


def rescan(config_file: Path, classifier: Classifier) -> None:
    config = load_config(config_file)
    scan_once(config, classifier)


def test_month_headings_and_the_timeline_jump(client_for, library: Path) -> None:  # type: ignore[no-untyped-def]
    for i, path in enumerate(sorted(library.rglob("*.jpg"))):
        month = (3, 7, 11)[i % 3]
        stamp = time.mktime((2022, month, 15, 12, 0, 0, 0, 0, -1))
        os.utime(path, (stamp, stamp))
    client = client_for(page_size=3)
    page = client.get("/").get_data(as_text=True)
    # the photos' stamps changed but the index keeps the scanned ones: read the months it holds
    jumps = re.findall(r'href="(/\?after=[^"#]+)#grid" aria-label="([A-Za-z]+ \d{4}): (\d+) images"', page)
    assert jumps, "no timeline"
    for href, month, count in jumps:
        landed = client.get(href.replace("&amp;", "&")).get_data(as_text=True)
        first = re.search(r'<li class="month-heading"><h2>([^<]+)</h2>', landed)
        assert first is not None and first.group(1) == month, (href, month)
    assert client.get("/?after=bm90LWEtY3Vyc29y").status_code == 200  # a cursor not made here: a problem shown, not a crash
    assert "not one this viewer made" in client.get("/?after=bm90LWEtY3Vyc29y").get_data(as_text=True)


def test_bulk_keywords_add_and_remove_for_the_selected_images(client_for, library: Path) -> None:  # type: ignore[no-untyped-def]
    client = client_for()
    chosen = [str(library / "coffee.jpg"), str(library / "chelsea.jpg"), str(library / "extras" / "cat-copy.jpg")]
    form = {"csrf": TOKEN, "path": chosen, "keywords": "trip, 海边", "action": "add"}
    answer = client.post("/keywords", data=form, headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.data
    assert answer.json == {"action": "add", "keywords": ["trip", "海边"], "changed": 3, "problems": []}
    found = names(client.get("/?q=tag:trip").get_data(as_text=True))
    assert sorted(found) in (["chelsea.jpg", "coffee.jpg"], ["cat-copy.jpg", "coffee.jpg"], ["cat-copy-2.jpg", "coffee.jpg"])
    sidecar = (library / ".coffee.jpg.tags.json") if (library / ".coffee.jpg.tags.json").exists() else None
    if sidecar is not None:
        assert "trip" in sidecar.read_text()
    # without the page's script: back to the grid it came from
    back = client.post("/keywords", data={**form, "action": "remove", "next": "/?q=tag:trip"})
    assert back.status_code == 303 and back.headers["Location"].endswith("/?q=tag:trip")
    assert names(client.get("/?q=tag:trip").get_data(as_text=True)) == []
    # one bad path among good ones: named, and the others still changed
    mixed = client.post("/keywords", data={**form, "path": [chosen[0], "/etc/passwd"]}, headers={"Accept": "application/json"})
    assert mixed.json["changed"] == 1 and len(mixed.json["problems"]) == 1 and "/etc/passwd" in mixed.json["problems"][0]


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"csrf": "wrong"}, 403, "viewer's own pages"),
        ({"action": "delete"}, 400, "add, remove or search"),
        ({"keywords": " , "}, 400, "give a keyword"),
        ({"path": []}, 400, "select at least one image"),
        ({"path": ["/x"] * 501}, 400, "at most 500"),
    ],
)
def test_bulk_keywords_refuse_what_is_not_a_whole_request(client_for, library: Path, change: dict, status: int, reason: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    client = client_for()
    form = {"csrf": TOKEN, "path": [str(library / "coffee.jpg")], "keywords": "trip", "action": "add", **change}
    answer = client.post("/keywords", data=form, headers={"Accept": "application/json"})
    assert answer.status_code == status and reason in answer.get_data(as_text=True)


def test_pages_can_be_kept_for_back_but_the_api_and_sign_in_are_not_stored(client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for()
    assert client.get("/").headers["Cache-Control"] == "private, no-cache"  # bfcache allowed, revalidated
    assert client.get("/api/images").headers["Cache-Control"] == "no-store"
    assert client.get("/health").headers["Cache-Control"] == "no-store"
    assert client.get("/").headers["Referrer-Policy"] == "same-origin"
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    guarded = client_for(token="t" * 32)
    assert guarded.get("/login").headers["Cache-Control"] == "no-store"
    assert guarded.get("/favicon.ico").status_code == 200  # open: it says nothing about the library
    signed_in = guarded.get("/", headers={"Authorization": "Bearer " + "t" * 32}).get_data(as_text=True)
    assert 'action="/logout"' in signed_in and "Sign out" in signed_in
    assert "Sign out" not in client.get("/").get_data(as_text=True)  # nothing to sign out of


def test_the_selection_opens_as_a_search(client_for, library: Path) -> None:  # type: ignore[no-untyped-def]
    client = client_for()
    chosen = [str(library / "coffee.jpg"), str(library / "extras" / "cat-copy.jpg")]
    opened = client.post("/keywords", data={"csrf": TOKEN, "path": chosen, "action": "search"})
    assert opened.status_code == 303 and "q=sha" in opened.headers["Location"]
    page = client.get(opened.headers["Location"]).get_data(as_text=True)
    found = names(page)
    assert len(found) == 2 and "coffee.jpg" in found  # the cat's copies are one tile, as anywhere
    assert "×3" in page
    assert client.post("/keywords", data={"csrf": TOKEN, "path": ["/x"] * 101, "action": "search"}).status_code == 400
    bad = client.get("/?q=sha:xyz").get_data(as_text=True)
    assert "sha: takes a content hash" in bad
