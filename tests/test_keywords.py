"""Keywords from rules, `tagger retag`, user corrections, XMP sidecars and the query language."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sqlite3
import subprocess
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from tagger.cli import cli
from tagger.config import Config, ModelConfig, SidecarConfig, load_config
from tagger.tags.keywords import keyword_rows
from tagger.library.keywording import Retagger
from tagger.library.sidecars import SidecarWriter
from tagger.engine.labels import Tag, imagenet_classes
from tagger.library.scan import Tagger
from tagger.index.records import ImageFacts
from tagger.library.jsonsidecar import read_sidecar
from tagger.index import MIGRATIONS, Index
from tagger.tags.terms import KeywordRow, Search
from tagger.daemon.watch import is_candidate
from tagger.library.xmp import read_keywords

from conftest import CountingClassifier
from test_scan import scan
from test_web import make_app, scanned_config
from test_xmp import LIGHTROOM

@pytest.fixture
def library(tmp_path: Path, sample_jpegs: list[Path]) -> Path:
    lib = tmp_path / "library"
    (lib / "2024").mkdir(parents=True)
    for src in sample_jpegs:
        shutil.copy(src, lib / "2024" / src.name if src.name == "coffee.jpg" else lib / src.name)
    return lib


@contextmanager
def daemon_tagger(config_path: Path, classifier: Any) -> Iterator[Tagger]:
    """A Tagger as the daemon holds one: for moves and deletes."""
    config = load_config(config_path)
    with Index.open(config.index) as store:
        tagger = Tagger(config, classifier, store)
        try:
            yield tagger
        finally:
            tagger.close()


def stored_keywords(config_path: Path, image: Path) -> dict[str, tuple[str, str]]:
    """keyword -> (path, source) from the index."""
    config = load_config(config_path)
    with Index.open(config.index, readonly=True) as store:
        record = store.file_record(str(image))
        assert record is not None and record.sha256 is not None
        return {k.keyword: (k.path, k.source) for k in store.keywords(record.sha256)}


def sidecar_keywords(image: Path) -> dict[str, str]:
    return {k["keyword"]: k["source"] for k in read_sidecar(image)["keywords"]}


def tagger_cli(config_path: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config_path), *args])


def retag_interrupted_before_the_sidecars(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retag that updates the index, then is stopped (Ctrl-C) before writing any sidecar."""

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(SidecarWriter, "refresh", crash)  # write goes through it too
        with pytest.raises(KeyboardInterrupt), Index.open(load_config(config).index) as store:
            Retagger(load_config(config), store).retag()


def test_rules_merge_cat_breeds_into_one_keyword_at_scan(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    config = write_config()
    scan(config, counting)
    cat = library / "chelsea.jpg"
    labels = [t["label"] for t in read_sidecar(cat)["tags"]]
    assert {"tiger cat", "Egyptian cat", "tabby"} <= set(labels)
    keywords = stored_keywords(config, cat)
    assert keywords["cat"] == ("animal/cat", "model")
    assert not {"tiger cat", "Egyptian cat", "tabby"} & set(keywords)
    document = read_sidecar(cat)
    assert document["schema_version"] == 2
    (entry,) = [k for k in document["keywords"] if k["keyword"] == "cat"]
    assert (entry["path"], entry["path_zh"], entry["keyword_zh"]) == ("animal/cat", "动物/猫", "猫")
    assert entry["score"] == max(t["score"] for t in document["tags"])


def test_retag_after_a_threshold_change_needs_no_model_run(
    library: Path, tmp_path: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{subtree: domestic cat, rename: cat, rename_zh: 猫}]\n", encoding="utf-8")
    config = write_config(rules=str(rules))
    scan(config, counting)
    runs = counting.images
    cat = library / "chelsea.jpg"
    assert "cat" in stored_keywords(config, cat) and "cat" in sidecar_keywords(cat)
    rules.write_text("rules: [{subtree: domestic cat, rename: cat, rename_zh: 猫, threshold: 0.9}]\n", encoding="utf-8")
    result = tagger_cli(config, "retag")
    assert result.exit_code == 0, result.output
    assert "keywords changed for 1," in result.stdout and "no model run" in result.stdout
    assert "cat" not in stored_keywords(config, cat) and "cat" not in sidecar_keywords(cat)
    assert counting.images == runs
    again = tagger_cli(config, "retag")
    assert "keywords changed for 0, 0 files' sidecars rewritten" in again.stdout


def test_a_correction_survives_retag_move_and_a_change_of_model(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier, lite0_torch: Any
) -> None:
    config_path = write_config()
    scan(config_path, counting)
    cat = library / "chelsea.jpg"
    assert tagger_cli(config_path, "tag", "add", str(cat), "Chelsea the cat").exit_code == 0
    removed = tagger_cli(config_path, "tag", "remove", str(cat), "cat")
    assert removed.exit_code == 0 and "removed by user: cat" in removed.stdout

    def check(image: Path) -> None:
        keywords = stored_keywords(config_path, image)
        assert keywords["Chelsea the cat"] == ("Chelsea the cat", "user") and "cat" not in keywords
        assert sidecar_keywords(image)["Chelsea the cat"] == "user" and "cat" not in sidecar_keywords(image)

    check(cat)
    assert tagger_cli(config_path, "retag").exit_code == 0
    check(cat)
    moved = library / "2024" / "renamed.jpg"
    with daemon_tagger(config_path, counting) as tagger:
        os.rename(cat, moved)
        assert tagger.move(cat, moved)
    check(moved)
    shown = tagger_cli(config_path, "tag", "show", str(moved))
    assert "user" in shown.stdout and "Chelsea the cat" in shown.stdout
    renamed_again = library / "again.jpg"
    os.rename(moved, renamed_again)
    scan(config_path, counting)  # a rename seen by a scan: the same content, found by its hash
    check(renamed_again)
    other_model = _Renamed(lite0_torch, "efficientnet-lite0-torch")
    scan(config_path, other_model)
    assert other_model.images == 6  # every content classified again by the new model
    check(renamed_again)


class _Renamed(CountingClassifier):
    """The same network under another name: to the index, a change of model."""

    def __init__(self, inner: Any, name: str) -> None:
        super().__init__(inner)
        self.name = name


def test_xmp_sidecar_read_back_with_exiftool(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    if shutil.which("exiftool") is None:
        if os.environ.get("CI"):
            pytest.fail("exiftool is required in CI")
        pytest.skip("exiftool is not installed")
    config = write_config(xmp={"enabled": True})
    scan(config, counting)
    out = subprocess.run(
        ["exiftool", "-j", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-XMP-digiKam:TagsList",
         str(library / "chelsea.jpg.xmp")],
        capture_output=True, text=True, check=True,
    )
    (found,) = json.loads(out.stdout)
    subjects = found["Subject"] if isinstance(found["Subject"], list) else [found["Subject"]]
    assert "cat" in subjects and "猫" in subjects
    assert "auto|animal|cat" in found["HierarchicalSubject"] and "auto|动物|猫" in found["HierarchicalSubject"]
    assert "auto/animal/cat" in found["TagsList"]


def test_an_existing_lightroom_xmp_is_merged_through_a_scan(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    xmp = library / "chelsea.xmp"
    xmp.write_text(LIGHTROOM, encoding="utf-8")
    config = write_config(xmp={"enabled": True, "style": "replace"})
    scan(config, counting)
    text = xmp.read_text(encoding="utf-8")
    for kept in ('xmp:Rating="4"', 'crs:Exposure2012="+0.35"', "<rdf:li>holiday</rdf:li>", "places|harbour"):
        assert kept in text
    assert "auto|animal|cat" in text and "<rdf:li>cat</rdf:li>" in text
    assert not (library / "chelsea.jpg.xmp").exists()


def test_query_language_through_the_cli(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    config = write_config()
    scan(config, counting)

    def names(*args: str) -> list[str]:
        result = tagger_cli(config, "query", *args)
        assert result.exit_code == 0, result.output
        return [Path(p).name for p in result.stdout.split()]

    assert names("猫") == ["chelsea.jpg"]
    assert names("tag:cat score:0.3..") == ["chelsea.jpg"]
    assert names("tag:cat score:0.9..") == []
    assert names("animal") == ["chelsea.jpg"]
    assert names("animal ^cat") == []
    assert names("folder:2024") == ["coffee.jpg"]
    assert "coffee.jpg" not in names("^folder:2024")
    assert len(names("added:-1d..")) == 6 and names("added:..2001") == []
    assert names("espresso", "--tag", "cup") == ["coffee.jpg"]
    assert tagger_cli(config, "tag", "add", str(library / "rocket.jpg"), "launch").exit_code == 0
    assert names("launch") == ["rocket.jpg"]
    assert tagger_cli(config, "tag", "remove", str(library / "chelsea.jpg"), "cat").exit_code == 0
    assert names("猫") == []
    for bad in ("tag:no-such-thing-xyz", "score:7", 'tag:"open'):
        result = tagger_cli(config, "query", bad)
        assert result.exit_code == 2 and "Error" in result.stderr


def test_added_at_is_kept_when_a_file_is_recorded_again(tmp_path: Path) -> None:
    index = tmp_path / "old.sqlite"
    with Index.open(index) as store, store.transaction():
        store.save_failure("/x/a.jpg", None, 1, 1, "bad")
    conn = sqlite3.connect(index)
    (added,) = conn.execute("SELECT added_at FROM files").fetchone()
    conn.close()
    assert added is not None
    with Index.open(index) as store:
        with store.transaction():
            store.save_failure("/x/a.jpg", None, 2, 2, "still bad")
        assert store.conn.execute("SELECT added_at FROM files").fetchone()[0] == added


def test_keywording_retag_counts(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    config_path = write_config()
    scan(config_path, counting)
    config = load_config(config_path)
    with Index.open(config.index) as store:
        unchanged = Retagger(config, store).retag()
        rebuilt = Retagger(config, store).retag(everything=True)
    assert (unchanged.contents, unchanged.changed, unchanged.sidecars) == (0, 0, 0)
    assert (rebuilt.contents, rebuilt.changed, rebuilt.sidecars) == (6, 0, 0)


def test_migration_fills_added_at_of_existing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "old.sqlite"
    with monkeypatch.context() as patch:
        patch.setattr("tagger.index.db.MIGRATIONS", MIGRATIONS[:4])
        with Index.open(index) as store, store.transaction():
            store.conn.execute(
                """INSERT INTO files (path, sha256, size, mtime_ns, status, error, sidecar, updated_at)
                   VALUES ('/x/a.jpg', NULL, 1, 1, 'failed', 'bad', NULL, '2020-01-02T03:04:05Z')"""
            )
    with Index.open(index) as store:
        assert store.schema_version() == len(MIGRATIONS)
        assert store.conn.execute("SELECT added_at FROM files").fetchone()[0] == "2020-01-02T03:04:05Z"


def test_a_daemon_move_carries_the_xmp_sidecar_and_the_watcher_ignores_it(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    config_path = write_config(xmp={"enabled": True})
    scan(config_path, counting)
    src, dst = library / "rocket.jpg", library / "2024" / "launch.jpg"
    assert not is_candidate(library / "rocket.jpg.xmp")
    with daemon_tagger(config_path, counting) as tagger:
        os.rename(src, dst)
        assert tagger.move(src, dst)
        os.unlink(dst)
        tagger.forget([dst])
    assert not (library / "rocket.jpg.xmp").exists()
    assert (library / "2024" / "launch.jpg.xmp").exists()  # a deleted image's XMP stays: other tools share it
    assert not (library / "2024" / "launch.jpg.tags.json").exists()


# -- the viewer ------------------------------------------------------------------------------

TOKEN = "a-long-enough-secret-token"


@pytest.fixture
def viewer_app(library: Path, tmp_path: Path, lite0: Any, weights_dir: Path) -> Iterator[Flask]:
    config = load_config(scanned_config(library, lite0, weights_dir, xmp={"enabled": True}))
    app = make_app(config, lite0, token=TOKEN)
    yield app
    app.extensions["tagger"].close()


def signed_in(app: Flask) -> FlaskClient:
    client = app.test_client()
    assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
    return client


def csrf_of(client: FlaskClient, raw: str) -> str:
    page = client.get(f"/image/{raw}").get_data(as_text=True)
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_viewer_corrections_rewrite_index_and_sidecars(viewer_app: Flask, library: Path) -> None:
    client = signed_in(viewer_app)
    cat = library / "chelsea.jpg"
    raw = str(cat).lstrip("/")
    page = client.get(f"/image/{raw}").get_data(as_text=True)
    assert 'class="keyword model"' in page and "animal/cat" in page and "Remove" in page
    token = csrf_of(client, raw)
    added = client.post(f"/image/{raw}/keywords", data={"csrf": token, "add": "Chelsea, garden"})
    assert added.status_code == 303
    removed = client.post(f"/image/{raw}/keywords", data={"csrf": token, "remove": "cat"})
    assert removed.status_code == 303
    page = client.get(f"/image/{raw}").get_data(as_text=True)
    assert 'class="keyword user"' in page and "Chelsea" in page and "animal/cat" not in page
    assert sidecar_keywords(cat)["garden"] == "user" and "cat" not in sidecar_keywords(cat)
    xmp = read_keywords(cat)  # the user's own keywords at the top level, not under the machine prefix
    assert {"Chelsea", "garden"} <= set(xmp["subject"]) & set(xmp["hierarchical"]) & set(xmp["digikam"])
    assert not [v for v in xmp["digikam"] if v.endswith("/Chelsea") or v.startswith("auto/animal/cat")]
    api = client.post(
        f"/api/images/{raw}/keywords", json={"add": ["sofa"], "remove": ["garden"]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert api.status_code == 200
    assert {k["keyword"]: k["source"] for k in api.json["keywords"]}.get("sofa") == "user"
    assert "garden" not in {k["keyword"] for k in api.json["keywords"]}
    xmp = read_keywords(cat)  # removing one of the user's keywords in tagger removes it from XMP too
    assert "garden" not in xmp["subject"] + xmp["digikam"] and {"sofa", "Chelsea"} <= set(xmp["digikam"])
    found = client.get("/api/images?q=" + quote("sofa ^cat folder:library"))
    assert [i["path"] for i in found.json["images"]] == [str(cat)]
    grid = client.get("/?q=" + quote("tag:sofa")).get_data(as_text=True)
    assert "chelsea.jpg" in grid and "Best matches for" in grid
    bad = client.get("/api/images?q=" + quote("tag:no-such-thing-xyz"))
    assert bad.status_code == 400 and "no-such-thing-xyz" in bad.json["error"]


def test_viewer_writes_through_one_connection(
    viewer_app: Flask, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Corrections share the viewer's one write connection: no writable index (and migration
    check) per request."""
    opened: list[bool] = []
    real_open = Index.open.__func__  # type: ignore[attr-defined]

    def counting_open(cls: type[Index], path: Path, *, readonly: bool = False) -> Index:
        opened.append(readonly)
        return real_open(cls, path, readonly=readonly)  # type: ignore[no-any-return]

    monkeypatch.setattr(Index, "open", classmethod(counting_open))
    client = signed_in(viewer_app)
    raw = str(library / "chelsea.jpg").lstrip("/")
    for word in ("one", "two", "three"):
        answer = client.post(
            f"/api/images/{raw}/keywords", json={"add": [word]}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert answer.status_code == 200
    assert opened.count(False) == 1
    assert {"one", "two", "three"} <= set(stored_keywords_of(viewer_app, library / "chelsea.jpg"))


def stored_keywords_of(app: Flask, image: Path) -> list[str]:
    with Index.open(app.extensions["tagger"].config.index, readonly=True) as store:
        record = store.file_record(str(image))
        assert record is not None and record.sha256 is not None
        return [k.keyword for k in store.keywords(record.sha256)]


def test_viewer_corrections_refuse_strangers_and_other_sites(viewer_app: Flask, library: Path) -> None:
    raw = str(library / "chelsea.jpg").lstrip("/")
    stranger = viewer_app.test_client()
    assert stranger.post(f"/image/{raw}/keywords", data={"add": "x"}).status_code == 401
    assert stranger.post(f"/api/images/{raw}/keywords", json={"add": ["x"]}).status_code == 401
    client = signed_in(viewer_app)
    token = csrf_of(client, raw)
    assert client.post(f"/image/{raw}/keywords", data={"add": "x"}).status_code == 403  # no form token
    assert client.post(f"/image/{raw}/keywords", data={"add": "x", "csrf": "forged"}).status_code == 403
    foreign = client.post(
        f"/image/{raw}/keywords", data={"add": "x", "csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    as_form = client.post(f"/api/images/{raw}/keywords", data={"add": "x"})
    assert as_form.status_code == 403  # a cross-site form cannot send JSON
    assert "x" not in sidecar_keywords(library / "chelsea.jpg")


RULE_CHANGES = (
    "",
    "rules: [{subtree: domestic cat, rename: cat, rename_zh: 猫, parents: [animal]}]",
    "rules: [{subtree: domestic cat, rename: cat, rename_zh: 猫, parents: [animal], threshold: 0.3}]",
    "rules: [{subtree: domestic cat, rename: cat, threshold: 0.3}, {class: tabby, drop: true}]",
    "rules: [{subtree: dog, rename: dog, parents: [animal]}, {class: tabby, threshold: 0.05}]",
    "rules: [{subtree: dog, rename: dog, parents: [animal]}, {class: beagle, rename: cat}]",
)


@pytest.mark.parametrize("bulk_share", [0.0, 1.0], ids=["in-bulk", "in-place"])
def test_retag_after_any_change_equals_tagging_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bulk_share: float
) -> None:
    """Whatever the path (bulk SQL or content by content, only the touched contents), the
    stored keywords and search terms are what the rules make of the raw tags from scratch."""
    monkeypatch.setattr("tagger.library.keywording.BULK_SHARE", bulk_share)
    rng = random.Random(7)
    classes = imagenet_classes()
    pool = [281, 282, 283, 284, 285, 151, 162, 207, 208, 967, 504, 817]  # cats, dogs, espresso, cup, car
    rules_file = tmp_path / "rules.yaml"
    store = Index.open(tmp_path / "index.sqlite")
    with store.transaction():
        for n in range(300):
            scores = sorted((rng.random() for _ in range(5)), reverse=True)
            chosen = rng.sample(pool, 5)
            tags = [Tag(c, classes[c].wnid, classes[c].label, classes[c].label_zh, s) for c, s in zip(chosen, scores)]
            store.save_image(ImageFacts(f"{n:064x}", 1, 1, 1), "m", "w", tags)
            if n % 10 == 0:
                word, action = rng.choice(["cat", "tabby", "holiday", "dog"]), rng.choice(["add", "remove"])
                store.save_correction(f"{n:064x}", word, action)
    try:
        for step, (text, min_score) in enumerate(zip(RULE_CHANGES * 2, [0.2] * 6 + [0.1, 0.4, 0.4, 0.3, 0.0, 0.2])):
            rules_file.write_text("categories: {animal: 动物}\n" + text + "\n", encoding="utf-8")
            config = Config(
                folders=(), index=tmp_path / "index.sqlite", weights_dir=tmp_path, rules=rules_file,
                model=ModelConfig(min_score=min_score), sidecar=SidecarConfig(enabled=False),
            )
            keywording = Retagger(config, store)
            keywording.retag()
            for content in store.stored_contents("", 1000):
                expected = keyword_rows(keywording.rules, content.tags, min_score, content.corrections)
                assert set(content.keywords) == set(expected), (step, content.sha256)
                terms = {(term, row.score) for row in expected for term in row.terms()}
                stored = store.conn.execute("SELECT term, score FROM keyword_terms WHERE sha256 = ?", (content.sha256,))
                assert set(stored.fetchall()) == terms, (step, content.sha256)
    finally:
        store.close()


def test_retag_looks_only_at_contents_a_changed_rule_touches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tagger.library.keywording.BULK_SHARE", 0.5)  # a quarter of this small index is "few"
    classes = imagenet_classes()
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("rules: [{class: tabby, threshold: 0.3}]\n", encoding="utf-8")
    config = Config(folders=(), index=tmp_path / "i.sqlite", weights_dir=tmp_path, rules=rules_file,
                    sidecar=SidecarConfig(enabled=False))
    with Index.open(config.index) as store:
        with store.transaction():
            for n, (class_id, score) in enumerate([(281, 0.35), (281, 0.5), (281, 0.1), (967, 0.9)] * 25):
                c = classes[class_id]
                tag = Tag(class_id, c.wnid, c.label, c.label_zh, score)
                store.save_image(ImageFacts(f"{n:064x}", 1, 1, 1), "m", "w", [tag])
        assert Retagger(config, store).retag().contents == 100  # no stored table yet: everything
        assert Retagger(config, store).retag().contents == 0
        rules_file.write_text("rules: [{class: tabby, threshold: 0.4}]\n", encoding="utf-8")
        config = dataclasses.replace(config)  # a config reads its rules once: a new one sees the change
        summary = Retagger(config, store).retag()
        assert (summary.contents, summary.changed) == (25, 25)  # only the tabbies scored 0.3-0.4
        assert store.conn.execute("SELECT COUNT(*) FROM keywords WHERE keyword = 'tabby'").fetchone()[0] == 25


@pytest.mark.parametrize(
    "search",
    [
        Search(groups=(("animal",),)),
        Search(groups=(("cat", "dog"),), score_min=0.2, score_max=0.8),
        Search(groups=(("dog",), ("animal",)), not_groups=(("cat",),)),
        Search(folders=("b",)),
    ],
    ids=["category", "two-terms-score-range", "and-not", "no-tag-words"],
)
def test_search_pages_walk_every_match_once_in_order(tmp_path: Path, search: Search) -> None:
    """Cursor pages of a query-language search (viewer and API) concatenate to the whole answer:
    ties in score, copies of one content in several folders and other keywords of the same
    content above the cursor included."""
    rng = random.Random(3)
    c = imagenet_classes()[281]
    with Index.open(tmp_path / "index.sqlite") as store:
        with store.transaction():
            for n in range(120):
                sha = f"{n:064x}"
                store.save_image(ImageFacts(sha, 1, 1, 1), "m", "w", [Tag(281, c.wnid, c.label, c.label_zh, 0.5)])
                words = rng.sample(["cat", "dog", "owl"], rng.randint(1, 3))
                scores = [rng.choice([0.1, 0.3, 0.5, 0.9]) for _ in words]  # ties on purpose
                rows = [KeywordRow(w, w, f"animal/{w}", f"动物/{w}", s, "model") for w, s in zip(words, scores)]
                store.save_keywords(sha, rows, replacing=False)
                for folder in rng.sample(["a", "b", "c"], rng.randint(1, 2)):
                    store.save_file(f"/lib/{folder}/{n:03d}.jpg", sha, 1, n, None)
        everything = [item.path for item in store.search_items(search, 10_000)]
        assert len(everything) > 20
        pages: list[str] = []
        after = None
        for _ in range(100):
            page = store.search_items(search, 7, after)
            pages += [item.path for item in page]
            if len(page) < 7:
                break
            after = page[-1].key
        assert pages == everything
        assert len(set(pages)) == len(pages)


def test_viewer_and_api_page_a_q_search(viewer_app: Flask, library: Path) -> None:
    client = signed_in(viewer_app)
    first = client.get("/api/images?limit=2&q=" + quote("score:0.001..")).json
    seen = [i["path"] for i in first["images"]]
    assert len(seen) == 2 and first["next"]
    url = first["next_url"]
    while url:
        page = client.get(url).json
        seen += [i["path"] for i in page["images"]]
        url = page["next_url"]
    everything = client.get("/api/images?limit=100&q=" + quote("score:0.001..")).json
    assert seen == [i["path"] for i in everything["images"]] and everything["next"] is None
    grid = client.get("/?q=" + quote("score:0.001..")).get_data(as_text=True)
    assert 'rel="next"' not in grid  # six photos fit on one page


def test_a_q_search_is_narrowed_by_the_pages_other_filters(viewer_app: Flask, library: Path) -> None:
    client = signed_in(viewer_app)
    q, folder = "q=" + quote("score:0.001.."), "folder=" + quote(str(library / "2024"))
    everything = {i["path"] for i in client.get(f"/api/images?limit=100&{q}").json["images"]}
    in_2024 = client.get(f"/api/images?limit=100&{q}&{folder}")
    assert in_2024.status_code == 200, in_2024.json
    assert {i["path"] for i in in_2024.json["images"]} == {str(library / "2024" / "coffee.jpg")} < everything
    cats = client.get(f"/api/images?limit=100&{q}&tag=cat").json["images"]
    assert [i["path"] for i in cats] == [str(library / "chelsea.jpg")]
    page = client.get(f"/?{q}&{folder}").get_data(as_text=True)
    assert "coffee.jpg" in page and "chelsea.jpg" not in page and 'name="q" value="score:0.001.."' in page


def test_a_retag_stopped_before_its_sidecars_is_caught_up_by_the_next(
    library: Path, tmp_path: Path, write_config: Callable[..., Path], counting: CountingClassifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keywords are committed before the files are written; a crash in between must not leave
    sidecars that disagree with the index for good (the next retag sees no rule change)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{subtree: domestic cat, rename: cat}]\n", encoding="utf-8")
    config = write_config(rules=str(rules), xmp={"enabled": True})
    scan(config, counting)
    cat = library / "chelsea.jpg"
    assert "cat" in sidecar_keywords(cat)
    rules.write_text("rules: [{subtree: domestic cat, rename: kitty}]\n", encoding="utf-8")
    retag_interrupted_before_the_sidecars(config, monkeypatch)
    assert "kitty" in stored_keywords(config, cat) and "cat" in sidecar_keywords(cat)  # the crash left them apart
    result = tagger_cli(config, "retag")
    assert "0 images looked at" in result.stdout and "1 files' sidecars rewritten" in result.stdout
    assert "kitty" in sidecar_keywords(cat) and "cat" not in sidecar_keywords(cat)
    assert "auto/kitty" in read_keywords(cat)["digikam"]
    assert "0 files' sidecars rewritten" in tagger_cli(config, "retag").stdout


def test_a_correction_rewrites_only_its_own_images_sidecars(
    library: Path, tmp_path: Path, write_config: Callable[..., Path], counting: CountingClassifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bug: a correction after an interrupted retag rewrote every pending sidecar (thousands of
    files inside one viewer request). It writes its own image's files; scan catches up the rest."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{subtree: domestic cat, rename: cat}]\n", encoding="utf-8")
    config = write_config(rules=str(rules))
    scan(config, counting)
    cat, coffee = library / "chelsea.jpg", library / "2024" / "coffee.jpg"
    rules.write_text("rules: [{subtree: domestic cat, rename: kitty}]\n", encoding="utf-8")
    retag_interrupted_before_the_sidecars(config, monkeypatch)
    before = cat.with_name(cat.name + ".tags.json").stat().st_mtime_ns
    assert tagger_cli(config, "tag", "add", str(coffee), "morning").exit_code == 0
    assert sidecar_keywords(coffee)["morning"] == "user"
    assert "cat" in sidecar_keywords(cat)  # still pending: not this correction's file
    assert cat.with_name(cat.name + ".tags.json").stat().st_mtime_ns == before
    scan(config, counting)  # a scan (and the daemon, which scans at start) catches up
    assert "kitty" in sidecar_keywords(cat) and "cat" not in sidecar_keywords(cat)
    assert "0 files' sidecars rewritten" in tagger_cli(config, "retag").stdout


def test_an_external_write_lock_is_not_blamed_on_another_tagger_command(tmp_path: Path) -> None:
    """sqlite3 holding a write lock was reported as "another tagger command is writing"."""
    import sqlite3

    from tagger.errors import StoreBusy
    from tagger.index import Index

    path = tmp_path / "index.sqlite"
    Index.open(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # what `sqlite3 index.sqlite` does with a transaction open
    try:
        with pytest.raises(StoreBusy) as busy:  # the writer's open (its schema check) is the first write
            with Index.open(path) as store, store.transaction():
                pass
        assert "another program holds its write lock" in str(busy.value) and "sqlite3" in str(busy.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
