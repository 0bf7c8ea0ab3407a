"""A learned tag's own threshold and forgetting a learned tag, on real photos and the real model.

The library is conftest's views_library (distinct views of the shipped photos); taught from chelsea.jpg and
one of its views, the tag matches the two examples and one other view of the cat (about 0.79).
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tagger.cli import cli


@pytest.fixture
def taught(views_library: Path, write_config: Callable[..., Path]) -> Path:
    """A scanned library with sidecars (JSON and XMP) and the learned tag mycat; the config's path."""
    config = write_config(xmp={"enabled": True})
    assert invoke(config, "scan").exit_code == 0
    result = invoke(
        config, "learn", "mycat", str(views_library / "chelsea.jpg"), str(cat_views(views_library)[0]),
        "--not", str(views_library / "coffee.jpg"),
    )
    assert result.exit_code == 0, result.output
    return config


def invoke(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args])


def cat_views(views_library: Path) -> list[Path]:
    found = sorted(views_library.glob("chelsea_view*.jpg"))
    assert len(found) == 2
    return found


def rows(config: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(config.parent / "index.sqlite") as conn:
        return conn.execute(sql, params).fetchall()


def matched_paths(config: Path) -> set[str]:
    """The files the index finds with tag:mycat (the keyword, not the learned_matches table).

    A keyword on no image at all is an unknown term to `tagger query`: nothing found."""
    found = invoke(config, "query", "tag:mycat", "--format", "paths")
    if found.exit_code == 2 and "no keyword, label or alias matches 'mycat'" in found.output:
        return set()
    assert found.exit_code == 0, found.output
    return set(found.output.splitlines())


def match_scores(config: Path) -> dict[str, float]:
    """learned_matches of mycat, by file path."""
    return dict(rows(config, "SELECT f.path, m.score FROM learned_matches m JOIN files f USING (sha256) WHERE m.name = 'mycat'"))


def stored_threshold(config: Path, name: str = "mycat") -> float | None:
    found = rows(config, "SELECT threshold FROM learned_tags WHERE name = ?", name)
    return None if not found else float(found[0][0])


def sidecar_has(image: Path, keyword: str) -> bool:
    """In the JSON sidecar as a keyword, and in the XMP sidecar under learned/."""
    doc = json.loads(image.with_name(image.name + ".tags.json").read_text())
    in_json = any(k["keyword"] == keyword for k in doc["keywords"])
    in_xmp = f"learned/{keyword}" in image.with_name(image.name + ".xmp").read_text()
    assert in_json == in_xmp, (image, keyword)
    return in_json


def test_threshold_moves_matches_keywords_and_sidecars_both_ways(views_library: Path, taught: Path) -> None:
    config = taught
    examples = {str(views_library / "chelsea.jpg"), str(cat_views(views_library)[0])}
    other_cat = cat_views(views_library)[1]
    at_half = match_scores(config)
    assert stored_threshold(config) == 0.5
    assert set(at_half) == examples | {str(other_cat)}  # the other view of the cat, at about 0.79
    assert 0.6 < at_half[str(other_cat)] < 0.95
    assert matched_paths(config) == set(at_half) and sidecar_has(other_cat, "mycat")

    # Stricter: the other view loses the tag, in the index and its sidecars; examples always match.
    strict = round(at_half[str(other_cat)] + 0.02, 2)
    result = invoke(config, "learn", "mycat", "--threshold", str(strict))
    assert result.exit_code == 0, result.output
    assert f"2 images match at threshold {strict:g}" in result.output
    assert stored_threshold(config) == pytest.approx(strict)
    assert set(match_scores(config)) == examples
    assert matched_paths(config) == examples
    assert not sidecar_has(other_cat, "mycat") and sidecar_has(views_library / "chelsea.jpg", "mycat")
    listed = invoke(config, "learned")
    assert listed.exit_code == 0 and "threshold" in listed.output and f"{strict:.2f}" in listed.output

    # Kept by a later training, which adds an example (the image that had just lost the tag).
    result = invoke(config, "learn", "mycat", str(other_cat))
    assert result.exit_code == 0 and f"at threshold {strict:g}" in result.output
    assert stored_threshold(config) == pytest.approx(strict)
    assert min(match_scores(config).values()) >= strict and str(other_cat) in matched_paths(config)

    # Looser: images below 0.5 gain the tag, and their sidecars say so.
    result = invoke(config, "learn", "mycat", "--threshold", "0.2")
    assert result.exit_code == 0, result.output
    loose = match_scores(config)
    assert len(loose) > len(at_half) and str(other_cat) in loose
    gained = sorted(Path(p) for p, score in loose.items() if score < 0.5 and "chelsea" not in Path(p).name)
    assert gained and not set(map(str, gained)) & set(at_half)  # not cats: the lower threshold let them in
    assert matched_paths(config) == set(loose)
    assert sidecar_has(gained[0], "mycat") and sidecar_has(other_cat, "mycat")

    # Given with examples, it applies to that training.
    result = invoke(config, "learn", "mycat", "--not", str(views_library / "coffee.jpg"), "--threshold", "0.6")
    assert result.exit_code == 0 and "at threshold 0.6" in result.output
    assert stored_threshold(config) == pytest.approx(0.6) and not sidecar_has(gained[0], "mycat")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "abc", "nan"])
def test_an_invalid_threshold_is_refused_and_changes_nothing(views_library: Path, taught: Path, value: str) -> None:
    before = match_scores(taught)
    result = invoke(taught, "learn", "mycat", "--threshold", value)
    assert result.exit_code == 2, result.output
    assert "--threshold" in result.output and value in result.output
    result = invoke(taught, "learn", "mycat", str(cat_views(views_library)[1]), "--threshold", value)
    assert result.exit_code == 2
    assert stored_threshold(taught) == 0.5 and match_scores(taught) == before  # not even the example was added
    assert len(rows(taught, "SELECT * FROM learned_examples WHERE name = 'mycat'")) == 3


def test_a_threshold_alone_needs_an_existing_tag(taught: Path) -> None:
    result = invoke(taught, "learn", "nocat", "--threshold", "0.7")
    assert result.exit_code == 1 and "no learned tag 'nocat'" in result.output
    assert stored_threshold(taught, "nocat") is None
    result = invoke(taught, "learn", "mycat")
    assert result.exit_code == 2 and "--threshold" in result.output


def test_new_images_and_cross_validation_use_the_tags_threshold(views_library: Path, taught: Path) -> None:
    from tagger.index import Index
    from tagger.vectors.learned import LearnedModels, cross_validated_precision

    other_cat = str(cat_views(views_library)[1])
    score = match_scores(taught)[other_cat]
    with Index.open(taught.parent / "index.sqlite", readonly=True) as store:
        record = store.file_record(other_cat)
        assert record is not None and record.sha256 is not None
        found = store.vectors.vector(record.sha256)
        assert found is not None
        model, vector = found
        scorer = LearnedModels(store, model)
        assert [n for n, _ in scorer.scores(vector)] == ["mycat"]
    assert invoke(taught, "learn", "mycat", "--threshold", str(round(score + 0.02, 2))).exit_code == 0
    with Index.open(taught.parent / "index.sqlite", readonly=True) as store:
        assert LearnedModels(store, model).scores(vector) == []  # as the daemon and scan would tag it
    # Cross-validation calls a match at the threshold given: at a tiny one, every held-out image.
    rng = np.random.default_rng(0)
    positives, negatives = rng.normal(2, 1, (6, 8)), rng.normal(-2, 1, (6, 8))
    background = rng.normal(-2, 1, (20, 8))
    assert cross_validated_precision(positives, negatives, background) == 1.0
    assert cross_validated_precision(positives, negatives, background, threshold=1e-30) == pytest.approx(6 / 32)


def test_unlearn_removes_the_tag_its_keywords_and_sidecar_entries(views_library: Path, taught: Path) -> None:
    config = taught
    had = matched_paths(config)
    assert len(had) == 3 and all(sidecar_has(Path(p), "mycat") for p in had)
    result = invoke(config, "unlearn", "mycat")
    assert result.exit_code == 0, result.output
    assert "forgot the learned tag 'mycat'" in result.output
    assert matched_paths(config) == set()
    assert not any(sidecar_has(Path(p), "mycat") for p in had)
    keywords = rows(config, "SELECT COUNT(*) FROM keywords WHERE keyword = 'mycat' OR path LIKE 'learned/%'")
    assert keywords == [(0,)]
    for table in ("learned_tags", "learned_examples", "learned_matches"):
        assert rows(config, f"SELECT COUNT(*) FROM {table}") == [(0,)], table
    assert "no learned tags yet" in invoke(config, "learned").output
    # The image keywords from the model are still there, and a retag does not bring the tag back.
    assert invoke(config, "retag", "--all").exit_code == 0
    assert matched_paths(config) == set()
    assert json.loads((views_library / "chelsea.jpg.tags.json").read_text())["keywords"]


def test_unlearn_of_an_unknown_tag_names_it(taught: Path) -> None:
    result = invoke(taught, "unlearn", "nocat")
    assert result.exit_code == 1
    assert "tagger: error: no learned tag 'nocat'" in result.output
    assert stored_threshold(taught) == 0.5 and len(matched_paths(taught)) == 3  # the other tag is untouched


def test_viewer_sets_the_threshold_and_forgets_a_tag(views_library: Path, taught: Path) -> None:
    from tagger.config import load_config
    from tagger.web import create_app
    from tagger.web.context import CSRF_COOKIE

    client = create_app(load_config(taught)).test_client()
    token = "t" * 32
    client.set_cookie(CSRF_COOKIE, token)
    page = client.get("/learned/mycat")
    assert page.status_code == 200
    assert b'action="/learned/mycat/threshold"' in page.data and b'value="0.50"' in page.data
    assert b'action="/learned/mycat/forget"' in page.data and b"data-confirm=" in page.data

    other_cat = cat_views(views_library)[1]
    strict = str(round(match_scores(taught)[str(other_cat)] + 0.02, 2))
    assert client.post("/learned/mycat/threshold", data={"threshold": strict}).status_code == 403  # no form token
    assert client.post("/learned/mycat/threshold", data={"csrf": "x" * 32, "threshold": strict}).status_code == 403
    assert stored_threshold(taught) == 0.5
    for bad in ("abc", "0", "1.5", ""):
        response = client.post("/learned/mycat/threshold", data={"csrf": token, "threshold": bad})
        assert response.status_code == 400, bad
    assert client.post("/learned/nocat/threshold", data={"csrf": token, "threshold": "0.7"}).status_code == 404
    assert stored_threshold(taught) == 0.5 and len(match_scores(taught)) == 3

    response = client.post("/learned/mycat/threshold", data={"csrf": token, "threshold": strict})
    assert response.status_code == 303 and response.headers["Location"].endswith("/learned/mycat")
    assert stored_threshold(taught) == pytest.approx(float(strict))
    assert str(other_cat) not in matched_paths(taught) and not sidecar_has(other_cat, "mycat")
    assert f'value="{float(strict):.2f}"'.encode() in client.get("/learned/mycat").data

    assert client.post("/learned/mycat/forget", data={}).status_code == 403  # no form token
    assert stored_threshold(taught) is not None
    assert client.post("/learned/nocat/forget", data={"csrf": token}).status_code == 404
    response = client.post("/learned/mycat/forget", data={"csrf": token})
    assert response.status_code == 303
    assert stored_threshold(taught) is None and matched_paths(taught) == set()
    assert not sidecar_has(views_library / "chelsea.jpg", "mycat")
    assert client.get("/learned/mycat").status_code == 404
