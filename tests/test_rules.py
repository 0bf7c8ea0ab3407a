"""Rules: raw model guesses -> keywords; precedence, merging, search terms, refusals, shipped data."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from tagger.errors import ConfigError
from tagger.tags.keywords import changed_bands, class_keywords
from tagger.engine.labels import Tag, imagenet_classes
from tagger.tags.rules import DEFAULT_RULES, Rules, wordnet
from tagger.tags.terms import ClassKeyword, KeywordRow

ROOT = Path(__file__).resolve().parent.parent
DOGS = range(151, 269)
DOMESTIC_CATS = range(281, 286)

# Raw top-5 tags of the shipped sample photos, as efficientnet-lite0 scores them
# (tests/test_classify.py checks the same photos through the model itself).
CHELSEA = [("tiger cat", 0.395), ("Egyptian cat", 0.355), ("tabby", 0.17), ("lynx", 0.014), ("window screen", 0.001)]
COFFEE = [("espresso", 0.951), ("cup", 0.015), ("consomme", 0.008), ("chocolate sauce", 0.004), ("coffee mug", 0.003)]
MOTORCYCLE = [("moped", 0.54), ("motor scooter", 0.12), ("disk brake", 0.075), ("crash helmet", 0.05)]
ROCKET = [("missile", 0.272), ("projectile", 0.189), ("drilling platform", 0.104), ("space shuttle", 0.059)]


def tags(*pairs: tuple[str | int, float]) -> list[Tag]:
    """Tags as the model gives them, from English labels or class ids."""
    classes = imagenet_classes()
    by_label = {c.label: c for c in classes}
    found = []
    for key, score in pairs:
        c = classes[key] if isinstance(key, int) else by_label[key]
        found.append(Tag(c.class_id, c.wnid, c.label, c.label_zh, score))
    return found


def load(tmp_path: Path, text: str) -> Rules:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return Rules.load(path)


def names(keywords: list[KeywordRow]) -> list[tuple[str, float]]:
    return [(k.keyword, k.score) for k in keywords]


CATS = """
categories: {animal: 动物, pet: 宠物}
rules:
  - class: [tabby, tiger cat, Egyptian cat]
    rename: cat
    rename_zh: 猫
    parents: [animal, pet]
    aliases: [kitty, 猫咪]
"""


def test_renamed_classes_merge_into_one_keyword_with_the_best_score(tmp_path: Path) -> None:
    rules = load(tmp_path, CATS)
    keywords = rules.apply(tags(("tiger cat", 0.3), ("lynx", 0.2), ("tabby", 0.4)), min_score=0.05)
    assert names(keywords) == [("cat", 0.4), ("lynx", 0.2)]
    cat = keywords[0]
    assert (cat.keyword_zh, cat.class_ids) == ("猫", (282, 281))
    assert (cat.path, cat.path_zh) == ("animal/pet/cat", "动物/宠物/猫")


def test_without_rules_every_class_is_its_own_keyword_above_min_score(tmp_path: Path) -> None:
    rules = load(tmp_path, "")
    keywords = rules.apply(tags(("tabby", 0.3), ("tiger cat", 0.6), ("lynx", 0.04)), min_score=0.05)
    assert names(keywords) == [("tiger cat", 0.6), ("tabby", 0.3)]
    assert keywords[1] == KeywordRow("tabby", "狸花猫", "tabby", "狸花猫", 0.3, "model")
    assert keywords[1].class_ids == (281,)


def test_threshold_per_class_overrides_min_score_up_and_down(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules:\n  - {class: envelope, threshold: 0.5}\n  - {class: 281, threshold: 0.01}\n")
    raw = tags(("envelope", 0.45), ("tabby", 0.02), ("lynx", 0.45))
    assert names(rules.apply(raw, min_score=0.1)) == [("lynx", 0.45), ("tabby", 0.02)]
    assert names(rules.apply(tags(("envelope", 0.5)), min_score=0.1)) == [("envelope", 0.5)]


def test_threshold_per_subtree(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules:\n  - {subtree: n02084071, threshold: 0.3}\n")
    raw = tags(("beagle", 0.25), ("Chihuahua", 0.35), ("timber wolf", 0.25))
    assert names(rules.apply(raw, min_score=0.1)) == [("Chihuahua", 0.35), ("timber wolf", 0.25)]


def test_drop_and_a_narrower_rule_that_undoes_it(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules:\n  - {subtree: dog, drop: true}\n  - {class: beagle, drop: false}\n")
    raw = tags(("beagle", 0.5), ("pug", 0.9), ("tabby", 0.2))
    assert names(rules.apply(raw, min_score=0.05)) == [("beagle", 0.5), ("tabby", 0.2)]
    assert names(rules.apply(tags(("pug", 1.0)), min_score=0.0)) == []


def test_aliases_are_search_terms_in_english_and_chinese_with_parents(tmp_path: Path) -> None:
    rules = load(tmp_path, CATS + "  - {class: lynx, parents: [animal]}\n  - {class: tabby, drop: true}\n")
    terms = rules.aliases()
    assert terms["cat"] == terms["猫"] == terms["kitty"] == terms["猫咪"] == [282, 285]
    assert terms["egyptian cat"] == terms["埃及猫"] == [285]
    assert terms["animal"] == terms["动物"] == [282, 285, 287]
    assert terms["pet"] == [282, 285]
    assert "tabby" not in terms and "狸花猫" not in terms


def test_class_rule_beats_subtree_rule_field_by_field(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
categories: {animal: 动物, dog: 狗}
rules:
  - {class: beagle, threshold: 0.6}
  - {subtree: dog, parents: [animal, dog], threshold: 0.2, rename: dog, rename_zh: 狗}
""",
    )
    assert rules.apply(tags(("beagle", 0.5)), min_score=0.05) == []
    assert rules.apply(tags(("pug", 0.5)), min_score=0.05)[0].path == "animal/dog/dog"
    beagle = rules.apply(tags(("beagle", 0.7)), min_score=0.05)[0]
    assert (beagle.keyword, beagle.keyword_zh, beagle.path) == ("dog", "狗", "animal/dog/dog")


@pytest.mark.parametrize("dog_first", [True, False])
def test_deeper_subtree_beats_shallower_in_any_order(tmp_path: Path, dog_first: bool) -> None:
    dog = "  - {subtree: n02084071, parents: [animal, dog], threshold: 0.2}\n"
    animal = "  - {subtree: animal, parents: [animal], threshold: 0.5}\n"
    text = "categories: {animal: 动物, dog: 狗}\nrules:\n" + (dog + animal if dog_first else animal + dog)
    rules = load(tmp_path, text)
    # whippet is also a "racer" (a racing animal), a short way up to animal: depth still decides.
    keywords = rules.apply(tags(("whippet", 0.3), ("beagle", 0.25), ("timber wolf", 0.3)), min_score=0.05)
    assert [k.path for k in keywords] == ["animal/dog/whippet", "animal/dog/beagle"]
    assert wordnet().depth("n02084071") > wordnet().depth("n00015388")


def test_of_two_equal_rules_the_later_wins(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules:\n  - {class: tabby, rename: first}\n  - {class: 281, rename: second}\n")
    assert names(rules.apply(tags(("tabby", 0.5)), min_score=0.05)) == [("second", 0.5)]


def test_unknown_class_names_the_file_the_rule_and_close_matches(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "rules:\n  - {subtree: dog}\n  - {class: [tabby, tabbby cat], rename: cat}\n")
    message = str(info.value)
    for words in (str(tmp_path / "rules.yaml"), "rule 2", "'class'", "'tabbby cat'", "did you mean", "'tabby'"):
        assert words in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("rules:\n  - {class: tabby, renam: cat}\n", ["rule 1 (class: tabby)", "'renam' is unknown", "'rename'"]),
        ("categorys: {}\n", ["key 'categorys' is unknown", "'categories'"]),
        ("rules:\n  - {subtree: felne}\n", ["'subtree'", "'felne'", "'feline'"]),
        ("rules:\n  - {subtree: vessel}\n", ["several WordNet synsets", "n04530566", "n04531098", "wnid"]),
        ("rules:\n  - {subtree: n09999999}\n", ["no ImageNet class lies under n09999999"]),
        ("rules:\n  - {class: CARDIGAN}\n", ["several classes", "264", "474", "id or wnid"]),
        ("rules:\n  - {class: 1000}\n", ["no class 1000", "0-999"]),
        ("rules:\n  - {class: tabby, threshold: 1.5}\n", ["'threshold'", "between 0 and 1", "1.5"]),
        ("rules:\n  - {class: tabby, drop: 'yes'}\n", ["'drop'", "true or false"]),
        ("rules:\n  - {class: tabby, parents: [animl]}\n", ["'parents'", "'animl'", "categories"]),
        ("categories: {animal: 动物}\nrules:\n  - {class: tabby, parents: [animl]}\n", ["did you mean 'animal'"]),
        ("rules:\n  - {class: tabby, subtree: dog}\n", ["rule 1", "exactly one of", "'class'", "'subtree'"]),
        ("rules:\n  - rename: cat\n", ["rule 1", "exactly one of"]),
        ("rules:\n  - tabby\n", ["rule 1 must be a mapping"]),
        ("rules: {class: tabby}\n", ["'rules' must be a list"]),
        ("categories: [animal]\n", ["'categories'", "animal: 动物"]),
        ("rules: [\n", ["not valid YAML"]),
    ],
)
def test_bad_rules_file_names_file_key_and_hint(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "rules.yaml"))
    for word in words:
        assert word in message


def test_missing_rules_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rules file not found"):
        Rules.load(tmp_path / "nope.yaml")


def test_hierarchy_covers_every_class_and_places_dogs_and_cats() -> None:
    tree = wordnet()
    above = [tree.ancestors(c.wnid) for c in imagenet_classes()]
    assert all("n00001740" in a for a in above)  # entity, WordNet's root
    assert [i for i, a in enumerate(above) if "n02084071" in a] == list(DOGS)
    assert [i for i, a in enumerate(above) if "n02121808" in a] == list(DOMESTIC_CATS)
    assert len([a for a in above if "n00015388" in a]) == 398  # animals
    assert [s.wnid for s in tree.named("Domestic Cat")] == ["n02121808"]


def test_shipped_defaults_turn_real_photo_tags_into_sensible_keywords() -> None:
    rules = Rules.load(None)
    cat = rules.apply(tags(*CHELSEA), min_score=0.05)
    assert [(k.path, k.keyword_zh, k.score, k.class_ids) for k in cat] == [("animal/cat", "猫", 0.395, (282, 285, 281))]
    assert cat[0].path_zh == "动物/猫"
    assert [(k.path, k.keyword_zh) for k in rules.apply(tags(*COFFEE), min_score=0.05)] == [
        ("food/drink/espresso", "意式浓缩咖啡")
    ]
    motorcycle = rules.apply(tags(*MOTORCYCLE), min_score=0.05)
    assert [(k.path, k.score) for k in motorcycle][:2] == [("vehicle/motorcycle", 0.54), ("disk brake", 0.075)]
    assert rules.apply(tags(*ROCKET), min_score=0.05)[0].path == "vehicle/rocket"


COMMON_SUBJECTS = [
    ("beagle", "animal/dog/beagle"),
    ("Persian cat", "animal/cat"),
    ("lion", "animal/lion"),
    ("goldfinch", "animal/bird/goldfinch"),
    ("sports car", "vehicle/car"),
    ("limousine", "vehicle/car"),
    ("mountain bike", "vehicle/mountain bike"),
    ("airliner", "vehicle/aircraft/airliner"),
    ("canoe", "vehicle/boat/canoe"),
    ("bullet train", "vehicle/train/bullet train"),
    ("pizza", "food/pizza"),
    ("banana", "food/fruit/banana"),
    ("broccoli", "food/vegetable/broccoli"),
    ("alp", "landscape/mountain"),
    ("seashore", "landscape/beach"),
    ("church", "building/church"),
    ("laptop", "electronics/laptop"),
    ("notebook", "electronics/laptop"),
    ("cellular telephone", "electronics/mobile phone"),
    ("daisy", "plant/flower/daisy"),
]


def test_shipped_defaults_file_common_subjects_and_hold_back_false_positives() -> None:
    rules = Rules.load(None)
    assert [(label, rules.apply(tags((label, 0.9)), min_score=0.05)[0].path) for label, _ in COMMON_SUBJECTS] == (
        COMMON_SUBJECTS
    )
    assert rules.apply(tags(("window screen", 0.99)), min_score=0.0) == []
    assert rules.apply(tags(("jigsaw puzzle", 0.5)), min_score=0.05) == []
    terms = rules.aliases()
    assert set(terms["dog"]) == set(terms["狗"]) == set(terms["puppy"]) == set(DOGS)
    assert terms["猫"] == terms["kitty"] == list(DOMESTIC_CATS)
    assert set(DOGS) | set(DOMESTIC_CATS) <= set(terms["animal"])
    assert 967 in terms["咖啡"] and 967 in terms["drink"]


def test_config_rules_yaml_is_the_packaged_default() -> None:
    assert (ROOT / "config" / "rules.yaml").read_text(encoding="utf-8") == DEFAULT_RULES.read_text(encoding="utf-8")


def test_changed_bands_cover_only_the_scores_a_change_can_touch(tmp_path: Path) -> None:
    def table(text: str, min_score: float = 0.2) -> list[ClassKeyword]:
        return class_keywords(load(tmp_path, text), min_score)

    base = table("rules:\n  - {class: tabby, threshold: 0.3}\n")
    # comments, another way to name the class and aliases change no keyword
    assert changed_bands(base, table("# note\nrules:\n  - {class: 281, threshold: 0.3, aliases: [kitty]}\n")) == []
    assert changed_bands(base, table("rules:\n  - {class: tabby, threshold: 0.35}\n")) == [(281, 0.3, 0.35)]
    assert changed_bands(base, table("rules:\n  - {class: tabby, threshold: 0.25}\n")) == [(281, 0.25, 0.3)]
    renamed = table("rules:\n  - {class: tabby, threshold: 0.3, rename: cat}\n")
    assert changed_bands(base, renamed) == [(281, 0.3, math.inf)]
    dropped = table("rules:\n  - {class: tabby, drop: true}\n")
    assert changed_bands(base, dropped) == changed_bands(dropped, base) == [(281, 0.3, math.inf)]
    assert changed_bands(dropped, table("rules:\n  - {class: tabby, drop: true, rename: cat}\n")) == []
    lower = changed_bands(base, table("rules:\n  - {class: tabby, threshold: 0.3}\n", min_score=0.1))
    assert lower == [(c, 0.1, 0.2) for c in range(1000) if c != 281]
