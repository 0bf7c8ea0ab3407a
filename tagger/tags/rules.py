"""Rules: which of the model's raw guesses a user sees as keywords, and under what names.

The raw top-k scores are stored untouched and rules are applied to them afterwards, so that
a changed threshold, rename or category re-tags the whole library in seconds with no model
run. The rules file format and its precedence are documented at the top of
tagger/data/default_rules.yaml.
"""
from __future__ import annotations

import csv
import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import Any, NoReturn

from tagger.errors import ConfigError
from tagger.engine.labels import ImageNetClass, Tag, imagenet_classes
from tagger.tags.terms import KeywordRow, name_problem
from tagger.yamlfile import parse_yaml, read_text

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "data" / "default_rules.yaml"

_TOP_KEYS = ("categories", "rules")
_RULE_KEYS = ("class", "subtree", "rename", "rename_zh", "threshold", "drop", "parents", "aliases")
_LEARNED_KEYS = ("learned", "rename", "rename_zh", "drop", "parents", "aliases")  # a learned tag's threshold is its own
_KINDS = ("class", "subtree", "learned")
LEARNED = "learned"  # the category of a learned tag's keyword that no rule has placed: learned/NAME
_WNID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class Synset:
    """One WordNet noun: an ImageNet class or one of its ancestors."""

    wnid: str
    hypernyms: tuple[str, ...]
    lemmas: tuple[str, ...]


class WordNet:
    """The WordNet 3.0 hypernym graph above the 1000 classes (shipped, since rules name subtrees).

    It is a graph, not a tree: a dog is both a canine and a domestic animal.
    """

    def __init__(self, synsets: dict[str, Synset]) -> None:
        self.synsets = synsets
        self._by_lemma: dict[str, list[Synset]] = {}
        for synset in synsets.values():
            for lemma in dict.fromkeys(lemma.casefold() for lemma in synset.lemmas):
                self._by_lemma.setdefault(lemma, []).append(synset)

    def ancestors(self, wnid: str) -> set[str]:
        """Every synset above `wnid`, and itself."""
        found: set[str] = set()
        pending = [wnid]
        while pending:
            current = pending.pop()
            if current not in found:
                found.add(current)
                pending.extend(self.synsets[current].hypernyms)
        return found

    def depth(self, wnid: str) -> int:
        """The longest chain of hypernyms from `wnid` up to 'entity': a synset is deeper than all above it."""
        hypernyms = self.synsets[wnid].hypernyms
        return 1 + max(map(self.depth, hypernyms)) if hypernyms else 0

    def named(self, lemma: str) -> list[Synset]:
        return self._by_lemma.get(lemma.casefold(), [])

    def names(self) -> list[str]:
        return list(self._by_lemma)


@lru_cache(maxsize=1)
def wordnet() -> WordNet:
    """Read once: every rules file resolves its subtrees against it."""
    text = resources.files("tagger").joinpath("data/imagenet_hierarchy.tsv").read_text(encoding="utf-8")
    rows = csv.DictReader((line for line in text.splitlines() if not line.startswith("#")), delimiter="\t")
    synsets = {
        r["wnid"]: Synset(r["wnid"], tuple(r["hypernyms"].split()), tuple(r["lemmas"].split("|"))) for r in rows
    }
    missing = [c.wnid for c in imagenet_classes() if c.wnid not in synsets]
    if missing:
        raise RuntimeError(f"tagger/data/imagenet_hierarchy.tsv is damaged: no entry for {', '.join(missing[:5])}")
    return WordNet(synsets)


@dataclass(frozen=True)
class Rule:
    """One entry of the rules file, as written; None means the rule leaves that field alone."""

    position: int  # 1-based place in the file: for messages, and the later of two equals wins
    kind: str  # "class", "subtree" or "learned"
    targets: tuple[str | int, ...]
    rename: str | None = None
    rename_zh: str | None = None
    threshold: float | None = None
    drop: bool | None = None
    parents: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"rule {self.position} ({self.kind}: {', '.join(map(str, self.targets))})"


@dataclass(frozen=True, slots=True)
class Display:
    """What a class is shown as; classes shown with the same name merge into one keyword."""

    @property
    def path(self) -> str:
        return "/".join((*self.parents, self.name))

    @property
    def path_zh(self) -> str:
        return "/".join((*self.parents_zh, self.name_zh))

    name: str
    name_zh: str
    parents: tuple[str, ...]
    parents_zh: tuple[str, ...]


@dataclass(frozen=True)
class _ClassRule:
    """The rules in effect for one class once precedence is settled."""

    display: Display
    threshold: float | None  # None: the caller's min_score
    dropped: bool
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class _LearnedRule:
    """The `learned:` rules in effect for one learned tag (by name), the later rule winning field by field."""

    display: Display
    dropped: bool
    aliases: tuple[str, ...]


class Rules:
    """Rules resolved into one entry per class at load, so that apply() is a lookup per tag."""

    def __init__(self, classes: Sequence[_ClassRule], learned: Mapping[str, _LearnedRule] | None = None) -> None:
        self._classes = tuple(classes)
        self._table = tuple((c.display, math.inf if c.dropped else c.threshold) for c in self._classes)
        self._learned = dict(learned or {})

    @classmethod
    def load(cls, path: Path | None = None) -> Rules:
        """Read and check a rules file; None is the default shipped inside the package.

        Config checking and the command itself both load the rules; the second load of the
        same text is a cache hit (a changed file is a new text, so a reload sees it).
        """
        source = path or DEFAULT_RULES
        return _parsed_rules(source, read_text(source, "rules", "copy config/rules.yaml there to start"))

    def apply(self, tags: Sequence[Tag], min_score: float) -> list[KeywordRow]:
        """Raw tags -> keywords, best first.

        Tags that come out with the same English keyword merge into one, with the best score
        and that tag's Chinese name and parents (the index keys keywords by name).
        """
        table = self._table
        found: dict[str, tuple[float, Display, list[int]]] = {}
        for tag in tags:
            display, threshold = table[tag.class_id]
            score = tag.score
            if score < (min_score if threshold is None else threshold):
                continue
            seen = found.get(display.name)
            if seen is None:
                found[display.name] = (score, display, [tag.class_id])
            else:
                seen[2].append(tag.class_id)
                if score > seen[0]:
                    found[display.name] = (score, display, seen[2])
        keywords = [
            KeywordRow(d.name, d.name_zh, d.path, d.path_zh, score, "model", tuple(ids)) for score, d, ids in found.values()
        ]
        keywords.sort(key=_best_first)
        return keywords

    def outcomes(self, min_score: float) -> list[tuple[Display, float]]:
        """Per class: what it shows as, and the least score at which it is a keyword (inf: dropped)."""
        return [(display, min_score if threshold is None else threshold) for display, threshold in self._table]

    def aliases(self) -> dict[str, list[int]]:
        """Search term (casefolded, English or Chinese) -> the classes it finds.

        Terms are each class's label, its name after rules, its parents and its aliases, so
        that 'cat', '猫' and 'kitty' find every domestic cat and 'animal' every animal. A
        dropped class is never a keyword, so no term leads to it.
        """
        terms: dict[str, list[int]] = {}
        for class_id, (rule, imagenet) in enumerate(zip(self._classes, imagenet_classes())):
            if rule.dropped:
                continue
            d = rule.display
            words = (imagenet.label, imagenet.label_zh, d.name, d.name_zh, *d.parents, *d.parents_zh, *rule.aliases)
            for word in dict.fromkeys(w.strip().casefold() for w in words):
                terms.setdefault(word, []).append(class_id)
        return terms


    def learned_display(self, name: str) -> Display | None:
        """What the learned tag `name` shows as; None when a rule drops it.

        Without a rule: NAME in English and Chinese, under learned/ (as before rules could name
        learned tags, so that sidecars written then stay the same). Parents given by a rule
        take the place of `learned`.
        """
        rule = self._learned.get(name)
        if rule is None:
            return Display(name, name, (LEARNED,), (LEARNED,))
        return None if rule.dropped else rule.display

    def learned_outcomes(self) -> dict[str, Display | None]:
        """Per learned tag that a rule names (taught or not): what it shows as, None when dropped.

        What `tagger retag` compares to know whether the learned tags' keywords must be redone."""
        return {name: self.learned_display(name) for name in sorted(self._learned)}

    def learned_aliases(self) -> dict[str, list[str]]:
        """Search term (casefolded) -> the learned keywords (names after rules) it finds.

        Terms are the tag's own name (still found after a rename, as a class's label is) and
        its rules' aliases; the keyword, its Chinese name and parents are stored terms already.
        """
        terms: dict[str, list[str]] = {}
        for name, rule in self._learned.items():
            if rule.dropped:
                continue
            for word in dict.fromkeys(w.strip().casefold() for w in (name, *rule.aliases)):
                terms.setdefault(word, []).append(rule.display.name)
        return terms


@lru_cache(maxsize=4)
def _parsed_rules(source: Path, text: str) -> Rules:
    return _RulesFile(source).build(parse_yaml(text, source))


def _best_first(keyword: KeywordRow) -> tuple[float, str]:
    return (-keyword.score, keyword.keyword)


class _RulesFile:
    """Checks one parsed rules file and resolves it; every refusal names the file, rule, key and a hint."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.classes = imagenet_classes()
        self.tree = wordnet()
        # Looked up once per rule target: scanning the 1000 classes for each made rules a third of every start.
        self.below: dict[str, list[int]] = {}  # wnid -> the class ids in its subtree, ascending
        for class_id, c in enumerate(self.classes):
            for wnid in self.tree.ancestors(c.wnid):
                self.below.setdefault(wnid, []).append(class_id)
        self.named: dict[str, list[ImageNetClass]] = {}  # wnid or English label -> classes, in id order
        self.folded: dict[str, list[ImageNetClass]] = {}  # casefolded label -> classes
        for c in self.classes:
            for key in dict.fromkeys((c.wnid, c.label)):
                self.named.setdefault(key, []).append(c)
            self.folded.setdefault(c.label.casefold(), []).append(c)

    def build(self, raw: Any) -> Rules:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.source}: the top level must be a mapping with keys categories and rules")
        self.check_keys(raw, _TOP_KEYS, "key")
        self.categories = self.read_categories(raw.get("categories") or {})
        entries = raw.get("rules") or []
        if not isinstance(entries, list):
            raise ConfigError(f"{self.source}: key 'rules' must be a list, e.g. rules: [{{class: tabby, drop: true}}]")
        rules = [self.read_rule(position, entry) for position, entry in enumerate(entries, start=1)]
        learned = [rule for rule in rules if rule.kind == "learned"]
        return Rules(self.resolve([rule for rule in rules if rule.kind != "learned"]), self.resolve_learned(learned))

    def read_categories(self, raw: Any) -> dict[str, str]:
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise ConfigError(f"{self.source}: key 'categories' must map English to Chinese names, e.g. animal: 动物")
        return raw

    def read_rule(self, position: int, raw: Any) -> Rule:
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.source}: rule {position} must be a mapping, e.g. {{class: tabby, rename: cat}}")
        kinds = [kind for kind in _KINDS if kind in raw]
        if len(kinds) != 1:
            raise ConfigError(
                f"{self.source}: rule {position} needs exactly one of the keys 'class' (one class: id, wnid or "
                "English label), 'subtree' (a WordNet wnid or name: every class below it) and 'learned' "
                "(a learned tag's name, as given to `tagger learn`)"
            )
        targets = raw[kinds[0]]
        rule = Rule(position, kinds[0], tuple(targets) if isinstance(targets, list) else (targets,))
        if rule.kind == "learned":
            rule = replace(rule, targets=tuple(self.learned_name(rule, target) for target in rule.targets))
            if not rule.targets:
                self.fail(rule, "learned", "names no learned tag", "e.g. learned: mycat, or a list: learned: [mycat, mydog]")
            if "threshold" in raw:
                example = rule.targets[0] if rule.targets else "NAME"
                self.fail(
                    rule, "threshold", "a learned tag's threshold is not set in the rules file",
                    f"use `tagger learn {example} --threshold T`: one place for a learned tag's threshold",
                )
        self.check_keys(raw, _LEARNED_KEYS if rule.kind == "learned" else _RULE_KEYS, f"{rule}: key")
        return replace(
            rule,
            rename=self.text(rule, raw, "rename"),
            rename_zh=self.text(rule, raw, "rename_zh"),
            threshold=self.threshold(rule, raw.get("threshold")),
            drop=self.flag(rule, raw.get("drop")),
            parents=self.parents(rule, raw["parents"]) if "parents" in raw else None,
            aliases=self.words(rule, "aliases", raw.get("aliases", [])),
        )

    def resolve(self, rules: list[Rule]) -> list[_ClassRule]:
        """Field by field, the most specific rule that sets a field decides it; aliases add up."""
        matching: list[list[tuple[tuple[int, int, int], Rule]]] = [[] for _ in self.classes]
        for rule in rules:
            for class_id, depth in self.matches(rule).items():
                rank = (1, 0, rule.position) if rule.kind == "class" else (0, depth, rule.position)
                matching[class_id].append((rank, rule))
        return [self.settle(c, [r for _, r in sorted(m, key=itemgetter(0))]) for c, m in zip(self.classes, matching)]

    def settle(self, imagenet: ImageNetClass, rules: list[Rule]) -> _ClassRule:
        """Apply `rules`, least specific first, to one class."""
        name, name_zh, threshold, dropped = imagenet.label, imagenet.label_zh, None, False
        parents: tuple[str, ...] = ()
        aliases: list[str] = []
        for rule in rules:
            if rule.rename is not None or rule.rename_zh is not None:
                name = rule.rename or imagenet.label
                name_zh = rule.rename_zh or rule.rename or imagenet.label_zh
            threshold = rule.threshold if rule.threshold is not None else threshold
            dropped = rule.drop if rule.drop is not None else dropped
            parents = rule.parents if rule.parents is not None else parents
            aliases.extend(rule.aliases)
        display = Display(name, name_zh, parents, tuple(self.categories[p] for p in parents))
        return _ClassRule(display, threshold, dropped, tuple(dict.fromkeys(aliases)))

    def resolve_learned(self, rules: list[Rule]) -> dict[str, _LearnedRule]:
        """Per learned tag named: its rules in file order, the later setting a field winning; aliases add up.

        A name not (yet) taught is kept: the rule applies once the tag is learned."""
        settled: dict[str, _LearnedRule] = {}
        for name in dict.fromkeys(str(target) for rule in rules for target in rule.targets):
            shown, shown_zh, dropped = name, name, False
            parents: tuple[str, ...] | None = None
            aliases: list[str] = []
            for rule in (r for r in rules if name in r.targets):
                if rule.rename is not None or rule.rename_zh is not None:
                    shown = rule.rename or name
                    shown_zh = rule.rename_zh or rule.rename or name
                dropped = rule.drop if rule.drop is not None else dropped
                parents = rule.parents if rule.parents is not None else parents
                aliases.extend(rule.aliases)
            if parents is None:
                display = Display(shown, shown_zh, (LEARNED,), (LEARNED,))
            else:
                display = Display(shown, shown_zh, parents, tuple(self.categories[p] for p in parents))
            settled[name] = _LearnedRule(display, dropped, tuple(dict.fromkeys(aliases)))
        return settled

    def learned_name(self, rule: Rule, target: str | int) -> str:
        """A learned tag's name as `tagger learn` accepts it (tagger.vectors.learned.check_name)."""
        if isinstance(target, bool) or not isinstance(target, str):
            self.fail(rule, "learned", f"{target!r} is not a tag name", "write the name, quoted if it looks like a number")
        problem = name_problem(target)
        if problem is not None:
            self.fail(rule, "learned", f"{target!r} cannot be a tag name", problem)
        return target.strip()

    def matches(self, rule: Rule) -> dict[int, int]:
        """class id -> the WordNet depth of the deepest of the rule's subtrees that holds it."""
        if rule.kind == "class":
            return {self.class_id(rule, target): 0 for target in rule.targets}
        depths = {wnid: self.tree.depth(wnid) for wnid in (self.subtree(rule, t) for t in rule.targets)}
        found: dict[int, int] = {}
        for wnid, depth in depths.items():
            for class_id in self.below.get(wnid, ()):
                found[class_id] = max(found.get(class_id, depth), depth)
        return dict(sorted(found.items()))

    def class_id(self, rule: Rule, target: str | int) -> int:
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            self.fail(rule, "class", f"{target!r} is not a class", "write an id 0-999, a wnid or an English label")
        if isinstance(target, int):
            if not 0 <= target < len(self.classes):
                self.fail(rule, "class", f"no class {target}", "class ids are 0-999")
            return target
        found = self.named.get(target) or self.folded.get(target.casefold(), [])
        if len(found) > 1:
            named = ", ".join(f"{c.class_id} ({c.label}, {c.label_zh})" for c in found)
            self.fail(rule, "class", f"{target!r} names several classes: {named}", "write the id or wnid")
        if not found:
            close = difflib.get_close_matches(target, [c.label for c in self.classes], n=3, cutoff=0.6)
            hint = _did_you_mean(close) or "write an id 0-999, a wnid or an English label from imagenet_classes.tsv"
            self.fail(rule, "class", f"unknown class {target!r}", hint)
        return found[0].class_id

    def subtree(self, rule: Rule, target: str | int) -> str:
        if not isinstance(target, str):
            self.fail(rule, "subtree", f"{target!r} is not a WordNet synset", "write a wnid (n02084071) or name (dog)")
        if target in self.tree.synsets:
            return target
        if _WNID.fullmatch(target):
            self.fail(rule, "subtree", f"no ImageNet class lies under {target}", "see imagenet_hierarchy.tsv")
        found = self.tree.named(target)
        if len(found) > 1:
            named = ", ".join(f"{s.wnid} ({', '.join(s.lemmas[:3])})" for s in found)
            self.fail(rule, "subtree", f"{target!r} names several WordNet synsets: {named}", "write the wnid")
        if not found:
            close = difflib.get_close_matches(target.casefold(), self.tree.names(), n=3, cutoff=0.6)
            hint = _did_you_mean(close) or "write a wnid or name from imagenet_hierarchy.tsv"
            self.fail(rule, "subtree", f"no WordNet synset above the ImageNet classes is called {target!r}", hint)
        return found[0].wnid

    def parents(self, rule: Rule, raw: Any) -> tuple[str, ...]:
        parents = self.words(rule, "parents", raw)
        for parent in parents:
            if parent not in self.categories:
                close = difflib.get_close_matches(parent, list(self.categories), n=3)
                hint = _did_you_mean(close) or f"add it under categories:, e.g. {parent}: <Chinese name>"
                self.fail(rule, "parents", f"{parent!r} is not one of the categories", hint)
        return parents

    def words(self, rule: Rule, key: str, raw: Any) -> tuple[str, ...]:
        values = [raw] if isinstance(raw, str) else raw
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            self.fail(rule, key, f"must be a list of words, not {raw!r}", f"e.g. {key}: [animal]")
        return tuple(values)

    def text(self, rule: Rule, raw: dict[str, Any], key: str) -> str | None:
        value = raw.get(key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            self.fail(rule, key, f"must be a name, not {value!r}", f"e.g. {key}: cat")
        if value is not None and (problem := name_problem(value)) is not None:
            self.fail(rule, key, f"{value!r} cannot be a name", problem)
        return value

    def threshold(self, rule: Rule, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            self.fail(rule, "threshold", f"must be a score between 0 and 1, not {value!r}", "e.g. threshold: 0.3")
        return float(value)

    def flag(self, rule: Rule, value: Any) -> bool | None:
        if value is not None and not isinstance(value, bool):
            self.fail(rule, "drop", f"must be true or false, not {value!r}", "e.g. drop: true")
        return value

    def check_keys(self, raw: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in raw:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
                raise ConfigError(f"{self.source}: {where} '{key}' is unknown ({hint})")

    def fail(self, rule: Rule, key: str, problem: str, hint: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {rule}: key '{key}': {problem} ({hint})")


def _did_you_mean(close: Iterable[str]) -> str:
    names = ", ".join(repr(c) for c in close)
    return f"did you mean {names}?" if names else ""
