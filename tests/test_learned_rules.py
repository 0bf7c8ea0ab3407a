"""Rules for learned tags (`learned: NAME`): names, Chinese names, categories, aliases and drop,
applied by retag, scan and search; refused threshold and parsing errors.

The library is conftest's views_library (distinct views of the shipped photos); mycat, taught from
chelsea.jpg and one of its views, matches the two examples and the other view of the cat.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from tagger.cli import cli
from tagger.errors import ConfigError
from tagger.tags.keywords import keyword_rows
from tagger.engine.labels import Tag, imagenet_classes
from tagger.tags.rules import Rules
from tagger.tags.searchterms import search_terms
from tagger.tags.terms import Correction, KeywordRow


CATEGORIES = "categories: {animal: 动物, pet: 宠物}\n"
MIMI = CATEGORIES + """rules:
  - learned: mycat
    rename: Mimi
    rename_zh: 咪咪
    parents: [animal, pet]
    aliases: [housecat, 家猫]
"""


def load(tmp_path: Path, text: str) -> Rules:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return Rules.load(path)


def tabby(score: float) -> list[Tag]:
    c = imagenet_classes()[281]
    return [Tag(c.class_id, c.wnid, c.label, c.label_zh, score)]


# --- The rules alone: parsing, keyword_rows, search terms ---------------------------------


def test_without_a_rule_a_learned_tag_stays_learned_name(tmp_path: Path) -> None:
    rules = load(tmp_path, CATEGORIES)
    rows = keyword_rows(rules, tabby(0.5), 0.1, [], [("mycat", 0.8)])
    assert rows[0] == KeywordRow("mycat", "mycat", "learned/mycat", "learned/mycat", 0.8, "model")
    assert [r.keyword for r in rows] == ["mycat", "tabby"]


def test_a_rule_renames_and_files_a_learned_keyword(tmp_path: Path) -> None:
    rules = load(tmp_path, MIMI)
    rows = keyword_rows(rules, tabby(0.5), 0.1, [], [("mycat", 0.8), ("other", 0.7)])
    assert rows[0] == KeywordRow("Mimi", "咪咪", "animal/pet/Mimi", "动物/宠物/咪咪", 0.8, "model")
    assert rows[1] == KeywordRow("other", "other", "learned/other", "learned/other", 0.7, "model")
    # Corrections name the keyword as shown (Mimi or 咪咪); one made under the tag's own name still holds.
    for word in ("Mimi", "咪咪", "mycat", "MyCat"):
        assert keyword_rows(rules, [], 0.1, [Correction(word, "remove")], [("mycat", 0.8)]) == [], word
    assert len(keyword_rows(rules, [], 0.1, [Correction("other", "remove")], [("mycat", 0.8)])) == 1


def test_rule_fields_settle_later_wins_and_without_parents_it_stays_under_learned(tmp_path: Path) -> None:
    rules = load(tmp_path, CATEGORIES + """rules:
  - {learned: [mycat, mydog], parents: [animal], aliases: [furry]}
  - {learned: mycat, rename_zh: 我的猫, aliases: [kitty]}
  - {learned: mydog, rename: tabby}
  - {learned: gone, drop: true}
""")
    rows = keyword_rows(rules, tabby(0.5), 0.1, [], [("mycat", 0.9), ("mydog", 0.6), ("gone", 0.99), ("plain", 0.3)])
    assert [(r.keyword, r.keyword_zh, r.path, r.path_zh, r.score) for r in rows] == [
        ("mycat", "我的猫", "animal/mycat", "动物/我的猫", 0.9),
        ("tabby", "tabby", "animal/tabby", "动物/tabby", 0.6),  # takes the place of the class's tabby
        ("plain", "plain", "learned/plain", "learned/plain", 0.3),
    ]
    # Only a Chinese name: the path stays under learned/.
    only_zh = load(tmp_path, "rules: [{learned: mycat, rename_zh: 我的猫}]")
    [row] = keyword_rows(only_zh, [], 0.1, [], [("mycat", 0.9)])
    assert (row.keyword, row.path, row.path_zh) == ("mycat", "learned/mycat", "learned/我的猫")
    # drop: false undoes a drop; parents: [] makes a top-level keyword.
    undone = load(tmp_path, "rules: [{learned: a, drop: true}, {learned: a, drop: false, parents: []}]")
    assert [r.path for r in keyword_rows(undone, [], 0.1, [], [("a", 0.9)])] == ["a"]


def test_two_learned_tags_renamed_alike_merge_with_the_best_score(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules: [{learned: [cat1, cat2], rename: cat}]")
    rows = keyword_rows(rules, [], 0.1, [], [("cat1", 0.6), ("cat2", 0.9)])
    assert [(r.keyword, r.score) for r in rows] == [("cat", 0.9)]


def test_search_terms_of_a_learned_rule(tmp_path: Path) -> None:
    rules = load(tmp_path, MIMI)
    assert "mimi" in search_terms(rules, "housecat")
    assert "mimi" in search_terms(rules, "家猫")
    assert "mimi" in search_terms(rules, "mycat")  # its own name still finds it, as a class's label does
    assert search_terms(rules, "咪咪") == ("咪咪",)  # a stored term of its Chinese path already
    dropped = load(tmp_path, "rules: [{learned: mycat, drop: true, aliases: [housecat]}]")
    assert search_terms(dropped, "housecat") == ("housecat",)


def test_a_rule_for_a_tag_not_learned_is_accepted(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules: [{learned: not yet taught, rename: later}]")
    assert keyword_rows(rules, tabby(0.5), 0.1, [], []) == keyword_rows(load(tmp_path, ""), tabby(0.5), 0.1, [], [])
    assert rules.learned_outcomes()["not yet taught"] is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [{learned: mycat, threshold: 0.7}]",
         "rule 1 (learned: mycat): key 'threshold': a learned tag's threshold is not set in the rules file "
         "(use `tagger learn mycat --threshold T`"),
        ("rules: [{learned: mycat, class: tabby}]", "rule 1 needs exactly one of the keys 'class'"),
        ("rules: [{learned: mycat, subtree: dog}]", "rule 1 needs exactly one of the keys"),
        ("rules: [{learned: mycat, renam: Mimi}]", "rule 1 (learned: mycat): key 'renam' is unknown (did you mean 'rename'?)"),
        ("rules: [{learned: 2024, rename: x}]", "rule 1 (learned: 2024): key 'learned': 2024 is not a tag name"),
        ("rules: [{learned: [], rename: x}]", "key 'learned': names no learned tag"),
        ("rules: [{learned: '  ', rename: x}]", "key 'learned': '  ' cannot be a tag name"),
        ("rules: [{learned: mycat, rename: 3}]", "key 'rename': must be a name, not 3"),
        ("rules: [{learned: mycat, drop: yes please}]", "key 'drop': must be true or false"),
        ("rules: [{learned: mycat, parents: [pets]}]", "key 'parents': 'pets' is not one of the categories"),
        ("rules: [{learned: mycat, aliases: 5}]", "key 'aliases': must be a list of words"),
    ],
)
def test_errors_in_a_learned_rule_name_file_rule_and_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert str(tmp_path / "rules.yaml") in str(caught.value)
    assert expected in str(caught.value)


def test_shipped_rules_file_documents_learned_rules() -> None:
    root = Path(__file__).resolve().parent.parent
    shipped = (root / "tagger" / "data" / "default_rules.yaml").read_text(encoding="utf-8")
    assert shipped == (root / "config" / "rules.yaml").read_text(encoding="utf-8")
    assert "learned:" in shipped and "tagger learn NAME --threshold" in shipped


# --- Real photos, the real model: retag, sidecars, search, scan -----------------------------


def invoke(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args])


def teach(config: Path, views_library: Path) -> set[str]:
    """Scan, then learn mycat; the paths it matches (the two examples and the other view)."""
    assert invoke(config, "scan").exit_code == 0
    views = sorted(views_library.glob("chelsea_view*.jpg"))
    result = invoke(config, "learn", "mycat", str(views_library / "chelsea.jpg"), str(views[0]),
                    "--not", str(views_library / "coffee.jpg"))
    assert result.exit_code == 0, result.output
    matched = {p for (p,) in rows(config, "SELECT f.path FROM learned_matches JOIN files f USING (sha256)")}
    assert matched == {str(views_library / "chelsea.jpg"), *map(str, views)}
    return matched


def rows(config: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(config.parent / "index.sqlite") as conn:
        return conn.execute(sql, params).fetchall()


def learned_keywords(config: Path, path: str) -> list[tuple[str, str, str, str]]:
    """The keywords of one file that do not come from the rules' classes (the learned one)."""
    return rows(
        config,
        """SELECT k.keyword, k.keyword_zh, k.path, k.path_zh FROM keywords k JOIN files f USING (sha256)
           WHERE f.path = ? AND k.keyword IN ('mycat', 'Mimi') ORDER BY k.keyword""",
        path,
    )


def found(config: Path, query: str) -> set[str]:
    result = invoke(config, "query", query, "--format", "paths")
    assert result.exit_code == 0, result.output
    return set(result.output.splitlines())


def sidecars(image: Path) -> tuple[list[dict[str, Any]], str]:
    """The JSON sidecar's keywords and the XMP sidecar's text."""
    doc = json.loads(image.with_name(image.name + ".tags.json").read_text(encoding="utf-8"))
    return doc["keywords"], image.with_name(image.name + ".xmp").read_text(encoding="utf-8")


def test_a_changed_rule_renames_the_learned_keyword_everywhere_after_retag(
    views_library: Path, write_config: Callable[..., Path], tmp_path: Path, sample_paths: dict[str, Path]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(CATEGORIES, encoding="utf-8")
    config = write_config(xmp={"enabled": True}, rules=str(rules))
    matched = teach(config, views_library)
    for path in matched:
        assert learned_keywords(config, path) == [("mycat", "mycat", "learned/mycat", "learned/mycat")]
    assert found(config, "tag:mycat") == matched

    rules.write_text(MIMI, encoding="utf-8")
    result = invoke(config, "retag")
    assert result.exit_code == 0, result.output
    assert "3 images looked at: keywords changed for 3, 3 files' sidecars rewritten" in result.output
    for path in matched:
        assert learned_keywords(config, path) == [("Mimi", "咪咪", "animal/pet/Mimi", "动物/宠物/咪咪")], path
        keywords, xmp = sidecars(Path(path))
        mimi = [k for k in keywords if k["keyword"] == "Mimi"]
        assert len(mimi) == 1 and (mimi[0]["keyword_zh"], mimi[0]["path"], mimi[0]["path_zh"]) == (
            "咪咪", "animal/pet/Mimi", "动物/宠物/咪咪"
        )
        assert not any(k["keyword"] == "mycat" for k in keywords)
        assert "animal/pet/Mimi" in xmp and "动物/宠物/咪咪" in xmp and "learned/mycat" not in xmp
    # Images the tag did not find keep their keywords and sidecars.
    coffee_keywords, coffee_xmp = sidecars(views_library / "coffee.jpg")
    assert not any(k["keyword"] in ("Mimi", "mycat") for k in coffee_keywords) and "Mimi" not in coffee_xmp

    for query in ("tag:咪咪", "tag:Mimi", "tag:housecat", "家猫", "tag:mycat", "tag:pet"):
        assert found(config, query) == matched, query
    assert found(config, "tag:animal") >= matched
    again = invoke(config, "retag")  # nothing changed since: nothing looked at
    assert again.exit_code == 0 and "0 images looked at: keywords changed for 0" in again.output

    # The image page's "Why?" beside the renamed keyword explains the learned tag.
    from tagger.config import load_config
    from tagger.web import create_app

    page = create_app(load_config(config)).test_client().get("/image/" + str(views_library / "chelsea.jpg").lstrip("/"))
    assert page.status_code == 200
    why = page.data.decode().split('data-label="Mimi"')[0].rsplit("<a ", 1)[-1]
    assert "tag=learned%2Fmycat" in why or "tag=learned/mycat" in why, why

    # New images get the rule as they are tagged.
    with Image.open(sample_paths["chelsea"]) as img:
        img.convert("RGB").resize((300, 200)).save(views_library / "new cat.jpg", quality=80)
    assert invoke(config, "scan").exit_code == 0
    new = str(views_library / "new cat.jpg")
    assert learned_keywords(config, new) == [("Mimi", "咪咪", "animal/pet/Mimi", "动物/宠物/咪咪")]
    assert new in found(config, "tag:咪咪")


def test_a_rule_written_first_applies_once_taught_and_drop_keeps_the_tag_learned(
    views_library: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(CATEGORIES + "rules: [{learned: mycat, rename_zh: 我的猫}]\n", encoding="utf-8")
    config = write_config(xmp={"enabled": True}, rules=str(rules))
    matched = teach(config, views_library)
    for path in matched:
        assert learned_keywords(config, path) == [("mycat", "我的猫", "learned/mycat", "learned/我的猫")]
    assert found(config, "tag:我的猫") == matched

    rules.write_text(CATEGORIES + "rules: [{learned: mycat, rename_zh: 我的猫, drop: true}]\n", encoding="utf-8")
    assert invoke(config, "retag").exit_code == 0
    for path in matched:
        assert learned_keywords(config, path) == []
        keywords, xmp = sidecars(Path(path))
        assert not any(k["keyword"] == "mycat" for k in keywords) and "mycat" not in xmp
    listed = invoke(config, "learned")
    assert listed.exit_code == 0 and "mycat" in listed.output
    assert len(rows(config, "SELECT * FROM learned_matches WHERE name = 'mycat'")) == 3
    result = invoke(config, "query", "tag:我的猫")
    assert result.exit_code == 2 and "no keyword, label or alias matches" in result.output

    rules.write_text(CATEGORIES, encoding="utf-8")  # no rule: back to learned/mycat
    assert invoke(config, "retag").exit_code == 0
    for path in matched:
        assert learned_keywords(config, path) == [("mycat", "mycat", "learned/mycat", "learned/mycat")]
        assert "learned/mycat" in sidecars(Path(path))[1]


def test_a_threshold_in_a_learned_rule_stops_tagger_at_start_up(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - learned: mycat\n    threshold: 0.7\n", encoding="utf-8")
    config = write_config(rules=str(rules))
    result = invoke(config, "learned")
    assert result.exit_code == 2
    assert f"{rules}: rule 1 (learned: mycat): key 'threshold'" in result.output
    assert "tagger learn mycat --threshold T" in result.output


@pytest.mark.parametrize("name", ["cats/dogs", "cats|dogs", " a/b "])
def test_a_slash_or_bar_in_a_learned_name_or_a_rename_is_refused_with_the_reason(
    name: str, tmp_path: Path
) -> None:
    """'/' and '|' separate categories: a name holding one split into a false hierarchy
    (auto|learned|cats|dogs, found by tag:cats and by tag:dogs) whose viewer page was a 404."""
    from tagger.errors import ConfigError
    from tagger.tags.rules import Rules
    from tagger.vectors.learned import LearnError, check_name

    with pytest.raises(LearnError, match="separate a keyword's categories"):
        check_name(name)
    for rule in (f"learned: {name!r}", f"class: tabby\n  rename: {name!r}", f"learned: mycat\n  rename_zh: {name!r}"):
        rules = tmp_path / "rules.yaml"
        rules.write_text(f"rules:\n- {rule}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="separate a keyword's categories"):
            Rules.load(rules)
