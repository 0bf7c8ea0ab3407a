"""Keywords: the rules applied to the stored raw tags, then the user's corrections.

The same steps run at a scan, at `tagger retag`, and when a user corrects a tag (CLI or
viewer), so a keyword means the same whichever wrote it. Sidecars (JSON, and XMP when
enabled) are rewritten from the result.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from tagger.config import Config
from tagger.errors import TaggerError
from tagger.labels import Tag, resolve_tag, suggest_labels
from tagger.querylang import Query, TimeRange
from tagger.rules import Rules
from tagger.sidecar import ImageFacts, sidecar_document, write_sidecar
from tagger.store import Correction, KeywordRow, Search, Store
from tagger.xmp import XmpError, write_xmp

log = logging.getLogger(__name__)
_V = TypeVar("_V")

RULES_SETTING = "rules_fingerprint"
MIN_SCORE_SETTING = "min_score"
RETAG_CACHE_BYTES = 512 << 20  # SQLite page cache while re-tagging: keeps the keyword indexes' pages in memory


class UnknownTag(TaggerError):
    """A search word that no keyword, label or alias means."""


@dataclass
class RetagSummary:
    contents: int = 0
    changed: int = 0
    sidecars: int = 0
    seconds: float = 0.0


def keyword_rows(
    rules: Rules, tags: Sequence[Tag], min_score: float, corrections: Sequence[Correction]
) -> list[KeywordRow]:
    """Rules, then corrections: a removed keyword is dropped; an added one is the user's, at 1.0."""
    removed = {c.keyword.casefold() for c in corrections if c.action == "remove"}
    added = [c.keyword for c in corrections if c.action == "add"]
    rows = [
        KeywordRow(k.name, k.name_zh, k.path, "/".join((*k.parents_zh, k.name_zh)), k.score, "model")
        for k in rules.apply(tags, min_score)
    ]
    taken = removed | {word.casefold() for word in added}
    kept = [r for r in rows if r.keyword.casefold() not in taken and r.keyword_zh.casefold() not in taken]
    users = [KeywordRow(word, word, word, word, 1.0, "user") for word in added if word.casefold() not in removed]
    return users + kept


def machine_keywords(rows: Sequence[KeywordRow]) -> list[str]:
    """What tagger writes under its XMP prefix: each keyword with its categories, in English and Chinese."""
    return list(dict.fromkeys(p for r in rows for p in (r.path, r.path_zh)))


def search_terms(rules: Rules, word: str) -> tuple[str, ...]:
    """The stored search words (keyword_terms.term) that a query word means.

    The word itself (a keyword, a category or a user's own keyword), and the keywords of
    every class it names: as an alias or label in the rules, a WordNet id or a class number.
    """
    folded = word.strip().casefold()
    fake = [Tag(c, "", "", "", 1.0) for c in sorted(_classes(rules, word))]
    names = {
        k.name.casefold()
        for k in rules.apply(fake, 0.0)
        # a keyword the word names, or one under it, is found by the word itself: one index range, not hundreds
        if folded not in {w.casefold() for w in (k.name, k.name_zh, *k.parents, *k.parents_zh)}
    }
    return tuple(sorted({folded} | names))


def _classes(rules: Rules, word: str) -> set[int]:
    """The classes a word names through the rules (keyword, category, alias) or as a label, id or number."""
    return set(_aliases(rules).get(word.strip().casefold(), ())) | {c.class_id for c in resolve_tag(word)}


def resolve_query(rules: Rules, query: Query, has_term: Callable[[str], bool]) -> Search:
    """A parsed query with each tag word turned into its search terms; UnknownTag when a word means nothing.

    `has_term` tells whether a word is a stored term (a user's own keyword, say).
    """

    def terms(word: str) -> tuple[str, ...]:
        found = search_terms(rules, word)
        if not _classes(rules, word) and not has_term(word.strip().casefold()):
            close = suggest_labels(word)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise UnknownTag(f"no keyword, label or alias matches {word!r}{hint}")
        return found

    return Search(
        groups=tuple(map(terms, query.tags)),
        not_groups=tuple(map(terms, query.not_tags)),
        score_min=0.0 if query.score_min is None else query.score_min,
        score_max=1.0 if query.score_max is None else query.score_max,
        folders=query.folders,
        not_folders=query.not_folders,
        added=_span(query.added, _iso),
        mtime_ns=_span(query.date, lambda t: int(t * 1e9)),
    )


def _span(when: TimeRange | None, convert: Callable[[float], _V]) -> tuple[_V | None, _V | None]:
    if when is None:
        return None, None
    return (
        None if when.start is None else convert(when.start),
        None if when.end is None else convert(when.end),
    )


def _iso(timestamp: float) -> str:
    """As files.added_at is written (UTC, to the second), so that text order is time order."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4)
def _aliases(rules: Rules) -> dict[str, list[int]]:
    """rules.aliases(), built once per Rules object (a few thousand words)."""
    return rules.aliases()


class Keywording:
    """Computes, stores and writes out the keywords of contents; the only writer of sidecars."""

    def __init__(self, config: Config, store: Store, rules: Rules | None = None) -> None:
        self.config = config
        self.store = store
        self.rules = rules or Rules.load(config.rules)

    def rows(self, sha256: str, tags: Sequence[Tag]) -> list[KeywordRow]:
        return keyword_rows(self.rules, tags, self.config.model.min_score, self.store.corrections(sha256))

    def write_sidecars(
        self,
        path: Path,
        facts: ImageFacts,
        model: str,
        weights_sha256: str,
        tags: Sequence[Tag],
        rows: Sequence[KeywordRow],
    ) -> tuple[str | None, str | None]:
        """JSON sidecar (and XMP when enabled): (the JSON sidecar's path, why it is missing)."""
        sidecar, note = None, None
        if self.config.sidecar.enabled:
            document = sidecar_document(
                path, facts, model, weights_sha256, tags, self.config.model.min_score, [r.as_dict() for r in rows]
            )
            try:
                sidecar = str(write_sidecar(path, document))
            except OSError as exc:
                note = f"sidecar not written: {exc.strerror or exc}"
                log.warning("%s: %s (tags are in the index)", path, note)
        if self.config.xmp.enabled:
            self.write_xmp(path, rows)
        return sidecar, note

    def write_xmp(self, path: Path, rows: Sequence[KeywordRow]) -> None:
        try:
            write_xmp(path, machine_keywords(rows), style=self.config.xmp.style, prefix=self.config.xmp.prefix)
        except XmpError as exc:
            log.warning("%s (keywords are in the index and the JSON sidecar)", exc)

    def remember_settings(self) -> None:
        """Which rules and threshold made the stored keywords (call inside a transaction)."""
        self.store.set_setting(RULES_SETTING, self.rules.fingerprint())
        self.store.set_setting(MIN_SCORE_SETTING, repr(self.config.model.min_score))

    def check_settings(self) -> None:
        """Warn when the stored keywords were made by other rules or another threshold."""
        stored = (self.store.setting(RULES_SETTING), self.store.setting(MIN_SCORE_SETTING))
        if stored == (None, None):
            with self.store.transaction():
                self.remember_settings()
        elif stored != (self.rules.fingerprint(), repr(self.config.model.min_score)):
            log.warning("rules or model.min_score changed since the stored keywords were made: run `tagger retag`")

    def retag(self, only: Sequence[str] | None = None, batch: int = 5000) -> RetagSummary:
        """Recompute keywords from the stored raw tags; rewrite sidecars of the contents that changed.

        No model run. `only` limits it to some contents (after a correction).
        """
        started = time.monotonic()
        summary = RetagSummary()
        self.store.grow_cache(RETAG_CACHE_BYTES)
        after = ""
        while True:
            contents = self.store.stored_contents(after, batch, only)
            if not contents:
                break
            changed = []
            with self.store.transaction():
                for content in contents:
                    rows = keyword_rows(self.rules, content.tags, self.config.model.min_score, content.corrections)
                    if set(rows) != set(content.keywords):
                        self.store.save_keywords(content.sha256, rows, replacing=bool(content.keywords))
                        changed.append((content, rows))
                if only is None:
                    self.remember_settings()
            summary.contents += len(contents)
            summary.changed += len(changed)
            for content, rows in changed:
                summary.sidecars += self._rewrite_sidecars(content.sha256, content.tags, rows)
            if only is not None:
                break
            after = contents[-1].sha256
        summary.seconds = time.monotonic() - started
        return summary

    def _rewrite_sidecars(self, sha256: str, tags: Sequence[Tag], rows: Sequence[KeywordRow]) -> int:
        if not (self.config.sidecar.enabled or self.config.xmp.enabled):
            return 0
        image = self.store.image_facts(sha256)
        if image is None:
            return 0
        facts, model, weights_sha256 = image
        paths = self.store.paths_with_content(sha256)
        for path in paths:
            sidecar, _ = self.write_sidecars(Path(path), facts, model, weights_sha256, tags, rows)
            if sidecar is not None:
                with self.store.transaction():
                    self.store.set_sidecar(path, sidecar)
        return len(paths)

    def correct(self, path: Path, keywords: Sequence[str], action: str) -> str:
        """Add or remove keywords of one image (of its content: every copy), then rewrite its sidecars."""
        record = self.store.file_record(str(path))
        if record is None or record.sha256 is None or record.status != "tagged":
            raise TaggerError(f"{path}: not a tagged image in the index (run `tagger scan` first)")
        words = [w.strip() for w in keywords if w.strip()]
        if not words:
            raise TaggerError("no keyword given")
        with self.store.transaction():
            for word in words:
                self.store.save_correction(record.sha256, word, action)
        self.retag(only=[record.sha256])
        return record.sha256

