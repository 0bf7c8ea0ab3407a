"""The tag browser (/tags), the list of learned tags (/learned) and the search suggestions (/api/tags),
through Flask's test client, on real photos tagged by the real model.

A user's own keyword and a learned tag taught through the viewer must be found again there.
"""
from __future__ import annotations

import html
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tagger.config import load_config
from tagger.engine.classify import Classifier
from tagger.index.tagbrowser import KeywordCount, TagBrowserRows, TermCount
from tagger.web.context import CSRF_COOKIE
from tagger.web.tagcounts import Category, keyword_tree

from test_web import make_app, scanned_config

CSRF = "c" * 32


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_jpegs: list[Path], lite0: Classifier,
            weights_dir: Path) -> Path:
    """The shipped photos, and a copy of the cat, scanned; the config file's path."""
    root = tmp_path_factory.mktemp("browser") / "library"
    root.mkdir()
    for photo in sample_jpegs:
        shutil.copy(photo, root / photo.name)
    shutil.copy(root / "chelsea.jpg", root / "chelsea copy.jpg")
    return scanned_config(root, lite0, weights_dir)


@pytest.fixture
def app(library: Path, lite0: Classifier) -> Iterator[Flask]:
    app = make_app(load_config(library), lite0)
    yield app
    app.extensions["tagger"].close()


def client_of(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.set_cookie(CSRF_COOKIE, CSRF)
    return client


def raw(library: Path, name: str) -> str:
    return str(library.parent / "library" / name).lstrip("/")


def teach(client: FlaskClient, library: Path, name: str, *photos: str) -> Any:
    paths = [str(library.parent / "library" / p) for p in photos]
    return client.post("/learn", data={"csrf": CSRF, "name": name, "path": paths, "side": "yes"})


def test_learned_lists_nothing_yet_without_a_404(app: Flask) -> None:
    client = client_of(app)
    for name in re.findall(r'href="/learned/([^"]+)"', client.get("/learned").get_data(as_text=True)):
        assert client.post(f"/learned/{name}/forget", data={"csrf": CSRF}).status_code == 303
    response = client.get("/learned")
    assert response.status_code == 200 and "No learned tags yet" in response.get_data(as_text=True)


def test_the_tag_browser_finds_keywords_own_keywords_and_learned_tags(app: Flask, library: Path) -> None:
    client = client_of(app)
    added = client.post(f"/image/{raw(library, 'chelsea.jpg')}/keywords", data={"csrf": CSRF, "add": "Garden cat"})
    assert added.status_code == 303
    assert teach(client, library, "mycat", "chelsea.jpg").status_code == 303
    page = client.get("/tags").get_data(as_text=True)

    # the keyword hierarchy: a collapsible category (animal) holding the cat, each linking to its search
    assert re.search(r"<details>\s*<summary>.*?>animal</a>.*?动物", page, re.S)
    assert 'href="/?q=tag:animal"' in page and 'href="/?q=tag:cat"' in page
    cat = re.search(r'data-words="animal/cat[^"]*">(.*?)</li>', page, re.S)
    assert cat is not None and "/thumb/" in cat.group(1)  # a cover photo
    assert re.search(r'class="count">2<span class="vh"> images', cat.group(1))  # chelsea and its copy
    # the user's own keyword, with its count and cover
    own = re.search(r'<li class="tb-item" data-words="Garden cat">(.*?)</li>', page, re.S)
    assert own is not None and "/thumb/" in own.group(1)
    assert 'class="count">2<span class="vh"> images' in own.group(1)  # a correction holds for every copy
    link = html.unescape(re.search(r'href="([^"]+)">Garden cat</a>', own.group(1)).group(1))  # type: ignore[union-attr]
    found = client.get(link).get_data(as_text=True)
    assert "chelsea" in found and "coffee.jpg" not in found
    # the learned tag: its images in the grid, and its own page
    learned = re.search(r'<li class="tb-item learned" data-words="mycat">(.*?)</li>', page, re.S)
    assert learned is not None
    assert 'href="/?q=tag:mycat"' in learned.group(1) and 'href="/learned/mycat"' in learned.group(1)
    # the raw classes are still there, collapsed, and the filter is kept
    assert 'id="all-tags"' in page and "/?q=class:espresso" in page and 'id="tag-filter"' in page
    assert 'src="/static/keywords.js"' in page

    grid = client.get("/?q=tag:mycat")
    assert grid.status_code == 200 and "chelsea" in grid.get_data(as_text=True)
    listing = client.get("/learned")
    assert listing.status_code == 200
    text = listing.get_data(as_text=True)
    assert 'href="/learned/mycat"' in text and "1 example, 0 counter-examples" in text


def test_suggestions_add_keywords_and_learned_tags_and_keep_the_classes(app: Flask, library: Path) -> None:
    client = client_of(app)
    client.post(f"/image/{raw(library, 'coffee.jpg')}/keywords", data={"csrf": CSRF, "add": "morning brew"})
    teach(client, library, "mycup", "coffee.jpg")
    body = client.get("/api/tags").json
    assert set(body) == {"images", "min_score", "tags"}
    classes = [t for t in body["tags"] if t["kind"] == "class"]
    assert body["tags"][: len(classes)] == classes  # the classes first, as before
    assert {"class_id", "wnid", "label", "label_zh", "count"} <= set(classes[0])
    assert {t["label"]: t["count"] for t in body["tags"]}["espresso"] == 1
    kinds = {t["label"]: t for t in body["tags"] if t["kind"] != "class"}
    assert kinds["morning brew"]["kind"] == "user" and kinds["morning brew"]["count"] == 1
    assert kinds["mycup"]["kind"] == "learned" and kinds["mycup"]["page"] == "/learned/mycup"
    assert kinds["cat"]["kind"] == "keyword" and kinds["cat"]["path"] == "animal/cat"
    assert kinds["cat"]["class_id"] is None and kinds["cat"]["count"] == 2
    labels = [t["label"].casefold() for t in body["tags"]]
    assert len(labels) == len(set(labels))  # each name suggested once


def test_the_tag_browser_costs_a_few_grouped_queries_then_none(app: Flask, library: Path) -> None:
    """Counts and covers come from one grouped query per list, not one per tag or image; a second
    view reads nothing until a writer commits."""
    client = client_of(app)
    client.get("/tags")  # opens this thread's connection
    statements: list[str] = []
    conn = app.extensions["tagger"].store().conn
    conn.set_trace_callback(statements.append)
    try:
        client.post(f"/image/{raw(library, 'rocket.jpg')}/keywords", data={"csrf": CSRF, "add": "launch"})
        statements.clear()
        assert client.get("/tags").status_code == 200
        grouped = [s for s in statements if "GROUP BY" in s]
        assert 3 <= len(grouped) <= 5, grouped
        assert len(statements) < 15, statements
        statements.clear()
        assert "launch" in client.get("/tags").get_data(as_text=True)
        assert not [s for s in statements if "GROUP BY" in s]
    finally:
        conn.set_trace_callback(None)


def test_the_browser_queries_stay_fast_at_a_thousand_keywords(tmp_path: Path, library: Path) -> None:
    """1,000 keywords in 50 categories, 20,000 files with 3 keywords each: the three grouped queries
    take well under a second (about 0.15 s on the 2-core test machine)."""
    index = tmp_path / "big.sqlite"
    shutil.copy(load_config(library).index, index)
    files = 20_000
    shas = [f"{i:064x}" for i in range(files)]
    keywords = [(shas[i // 3], (i * 7919) % 1000, (i % 997) / 997) for i in range(3 * files)]
    with sqlite3.connect(index) as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO keywords (sha256, keyword, keyword_zh, path, path_zh, score, source)"
            " VALUES (?, ?, ?, ?, ?, ?, 'model')",
            [(s, f"k{k}", f"k{k}", f"syn{k % 50}/k{k}", f"syn{k % 50}/k{k}", score) for s, k, score in keywords],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO keyword_terms (term, score, sha256) VALUES (?, ?, ?)",
            [(f"syn{k % 50}", score, s) for s, k, score in keywords],
        )
        conn.executemany(
            "INSERT INTO files (path, sha256, size, mtime_ns, status, updated_at, added_at)"
            " VALUES (?, ?, 1, 1, 'tagged', '', '')",
            [(f"/x/{s}.jpg", s) for s in shas],
        )
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
        rows = TagBrowserRows(conn)
        started = time.perf_counter()
        counted = rows.keyword_counts()
        terms = rows.term_counts([f"syn{i}" for i in range(50)])
        rows.learned_counts()
        seconds = time.perf_counter() - started
    assert len([k for k in counted if k.path.startswith("syn")]) == 1000 and len(terms) == 50
    assert sum(t.files for t in terms.values()) >= files
    print(f"tag browser queries: {seconds:.3f} s for 1,000 keywords over {files:,} files")
    assert seconds < 1.0, seconds


def test_keyword_tree_places_keywords_under_their_categories() -> None:
    keywords = [
        KeywordCount("beagle", "比格犬", "animal/dog/beagle", "动物/狗/比格犬", "model", 3, "b"),
        KeywordCount("dog", "狗", "animal/dog", "动物/狗", "model", 2, "d"),
        KeywordCount("cat", "猫", "animal/cat", "动物/猫", "model", 4, "c"),
        KeywordCount("rocket", "火箭", "rocket", "火箭", "model", 1, "r"),
        KeywordCount("mine", "mine", "mine", "mine", "user", 9, "m"),
    ]
    terms = {"animal": TermCount("animal", 8, "c"), "dog": TermCount("dog", 4, "b")}
    tree = keyword_tree(keywords, terms)
    assert [n.name for n in tree] == ["animal", "rocket"]  # the user's own keywords are listed apart
    animal = tree[0]
    assert (animal.files, animal.cover, animal.name_zh) == (8, "c", "动物")
    assert [n.name for n in animal.children] == ["cat", "dog"]  # most files first
    dog = animal.children[1]
    assert isinstance(dog, Category) and dog.keyword is not None and dog.files == 4  # a keyword and a category
    assert [(n.name, n.files, n.cover) for n in dog.children] == [("beagle", 3, "b")]
    assert "animal/dog/beagle" in dog.children[0].words() and "比格犬" in dog.children[0].words()
