"""Keywords: the rules applied to the stored raw tags, then the user's corrections.

The same steps run at a scan, at `tagger retag`, and when a user corrects a tag (CLI or
viewer), so a keyword means the same whichever wrote it. Sidecars (JSON, and XMP when
enabled) are rewritten from the result.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from tagger.config import Config
from tagger.errors import TaggerError
from tagger.fileio import write_problem
from tagger.labels import Tag, resolve_tag, suggest_labels
from tagger.querylang import Query, TimeRange
from tagger.rules import Rules
from tagger.sidecar import ImageFacts, sidecar_document, write_sidecar
from tagger.store import ClassKeyword, Correction, KeywordRow, Search, StoredContent, Store
from tagger.vectorindex import VectorRows
from tagger.xmp import XmpError, write_xmp

log = logging.getLogger(__name__)
_V = TypeVar("_V")

RULES_SETTING = "keyword_rules"  # per class, the keyword and least score that made the stored keywords
BULK_SHARE = 0.2  # when more of the contents than this may change, rebuild all in bulk (SQL), not one by one
RETAG_CACHE_BYTES = 512 << 20  # SQLite page cache while re-tagging: keeps the keyword indexes' pages in memory


class UnknownTag(TaggerError):
    """A search word that no keyword, label or alias means."""


@dataclass
class RetagSummary:
    contents: int = 0  # looked at: the contents a changed rule can touch (all, in a bulk rebuild)
    changed: int = 0  # whose keywords changed
    sidecars: int = 0  # files whose sidecars were rewritten
    seconds: float = 0.0


def keyword_rows(
    rules: Rules,
    tags: Sequence[Tag],
    min_score: float,
    corrections: Sequence[Correction],
    learned: Sequence[tuple[str, float]] = (),
) -> list[KeywordRow]:
    """Rules and learned tags (tagger.learn), then corrections: a removed keyword is dropped; an
    added one is the user's, at 1.0. A learned tag takes the place of a rule's keyword of its name."""
    removed = {c.keyword.casefold() for c in corrections if c.action == "remove"}
    added = [c.keyword for c in corrections if c.action == "add"]
    taught = [KeywordRow(name, name, f"learned/{name}", f"learned/{name}", score, "model") for name, score in learned]
    names = {r.keyword.casefold() for r in taught}
    rows = taught + [
        KeywordRow(k.name, k.name_zh, k.path, "/".join((*k.parents_zh, k.name_zh)), k.score, "model")
        for k in rules.apply(tags, min_score)
        if k.name.casefold() not in names
    ]
    taken = removed | {word.casefold() for word in added}
    kept = [r for r in rows if r.keyword.casefold() not in taken and r.keyword_zh.casefold() not in taken]
    users = [KeywordRow(word, word, word, word, 1.0, "user") for word in added if word.casefold() not in removed]
    return users + kept


def class_keywords(rules: Rules, min_score: float) -> list[ClassKeyword]:
    """The rules as a table: per class, its keyword and the least score at which it counts."""
    return [
        ClassKeyword(class_id, threshold, d.name, d.name_zh, d.path, d.path_zh)
        for class_id, (d, threshold) in enumerate(rules.outcomes(min_score))
    ]


def changed_bands(old: Sequence[ClassKeyword], new: Sequence[ClassKeyword]) -> list[tuple[int, float, float]]:
    """(class, low, high): the raw scores of a class whose keyword differs between two tables.

    Same keyword, other threshold: the scores between the two thresholds. Another keyword,
    or a drop: every score from the lower threshold up. Scores below both never counted.
    A content is re-tagged only when one of its raw tags falls in a band.
    """
    bands = []
    for was, now in zip(old, new):
        low, high = sorted((was.threshold, now.threshold))
        if was == now or low > 1.0:
            continue
        renamed = (was.keyword, was.keyword_zh, was.path, was.path_zh) != (
            now.keyword, now.keyword_zh, now.path, now.path_zh
        )
        bands.append((now.class_id, low, math.inf if renamed else high))
    return bands


def _dump_table(table: Sequence[ClassKeyword]) -> str:
    return json.dumps(
        [[None if math.isinf(k.threshold) else k.threshold, k.keyword, k.keyword_zh, k.path, k.path_zh] for k in table],
        ensure_ascii=False,
    )


def _load_table(text: str | None) -> list[ClassKeyword] | None:
    """The stored table, or None when there is none or it cannot be read (then everything is re-tagged)."""
    try:
        rows = json.loads(text or "null")
        table = [
            ClassKeyword(class_id, math.inf if threshold is None else float(threshold), *map(str, names))
            for class_id, (threshold, *names) in enumerate(rows)
        ]
    except (TypeError, ValueError):
        return None
    return table if len(table) == 1000 and all(len(r) == 5 for r in rows) else None


def machine_keywords(rows: Sequence[KeywordRow]) -> list[str]:
    """What tagger writes under its XMP prefix: each model keyword with its categories, in English and Chinese.

    The user's own keywords are not machine tags: they go into XMP at the top level.
    """
    return list(dict.fromkeys(p for r in rows if r.source == "model" for p in (r.path, r.path_zh)))


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

    def rows(self, sha256: str, tags: Sequence[Tag], learned: Sequence[tuple[str, float]] | None = None) -> list[KeywordRow]:
        """`learned`: the learned tags this content matches (None: those stored for it)."""
        if learned is None:
            learned = VectorRows(self.store.conn).learned_of(sha256)
        return keyword_rows(self.rules, tags, self.config.model.min_score, self.store.corrections(sha256), learned)

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
            document = sidecar_document(path, facts, model, weights_sha256, tags, [r.as_dict() for r in rows])
            try:
                sidecar = str(write_sidecar(path, document))
            except OSError as exc:
                note = f"sidecar not written: {write_problem(exc, path)}"
                log.warning("%s: %s (tags are in the index)", path, note)
        if self.config.xmp.enabled:
            self.write_xmp(path, rows)
        return sidecar, note

    def write_xmp(self, path: Path, rows: Sequence[KeywordRow]) -> None:
        try:
            write_xmp(
                path,
                machine_keywords(rows),
                style=self.config.xmp.style,
                prefix=self.config.xmp.prefix,
                user=[r.keyword for r in rows if r.source == "user"],
            )
        except XmpError as exc:
            log.warning("%s (keywords are in the index and the JSON sidecar)", exc)

    def table(self) -> list[ClassKeyword]:
        return class_keywords(self.rules, self.config.model.min_score)

    def remember_settings(self, table: Sequence[ClassKeyword]) -> None:
        """Which rules made the stored keywords, for the next retag to compare (call inside a transaction)."""
        self.store.set_setting(RULES_SETTING, _dump_table(table))

    def check_settings(self) -> None:
        """Warn when the stored keywords were made by other rules or another threshold."""
        stored, current = self.store.setting(RULES_SETTING), self.table()
        if stored is None and self.store.content_count() == 0:
            with self.store.transaction():
                self.remember_settings(current)
        elif stored != _dump_table(current):
            log.warning("rules or model.min_score changed since the stored keywords were made: run `tagger retag`")

    def retag(
        self,
        only: Sequence[str] | None = None,
        *,
        everything: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> RetagSummary:
        """Recompute keywords from the stored raw tags (no model run); rewrite sidecars of the contents that changed.

        The per-class table of the rules that made the stored keywords is kept in the index;
        only contents with a raw tag in a band where the old and new tables differ are looked
        at, in SQL; past BULK_SHARE of the library every keyword is rebuilt in bulk instead.
        Corrected contents are redone here, in Python, by the same steps as a scan.
        `only`: just these contents (after a correction); `everything`: rebuild all.
        `on_progress(n)`: n more files' sidecars rewritten.
        """
        started = time.monotonic()
        summary = RetagSummary()
        self.store.grow_cache(RETAG_CACHE_BYTES)
        if only is not None:
            summary.contents = len(set(only))
            with self.store.transaction():
                changed = [c.sha256 for c in self.store.contents(only) if self._redo(c)]
                self._sidecars_pending(changed)
        else:
            table = self.table()
            stored = None if everything else _load_table(self.store.setting(RULES_SETTING))
            bands = None if stored is None else changed_bands(stored, table)
            changed = []
            if bands != []:
                total = self.store.content_count()
                bulk_above = int(BULK_SHARE * total)
                log.info("re-tagging from the stored raw tags (%d images in the index, no model run)", total)
                with self.store.transaction():
                    corrected = self.store.contents(
                        [*self.store.corrected_contents(), *VectorRows(self.store.conn).learned_contents()]
                    )
                    summary.contents, changed = self.store.remake_keywords(table, bands, bulk_above)
                    changed += [c.sha256 for c in corrected if self._redo(c)]
                    self._sidecars_pending(changed)
                    self.remember_settings(table)
        summary.changed = len(changed)
        summary.sidecars = self._rewrite_sidecars(on_progress)
        summary.seconds = time.monotonic() - started
        return summary

    def _redo(self, content: StoredContent) -> bool:
        """One content through rules and corrections, saved; whether that differs from `content.keywords`."""
        rows = self.rows_of(content)
        if set(rows) != set(self.store.keywords(content.sha256)):
            self.store.save_keywords(content.sha256, rows)
        return set(rows) != set(content.keywords)

    def rows_of(self, content: StoredContent) -> list[KeywordRow]:
        learned = VectorRows(self.store.conn).learned_of(content.sha256)
        return keyword_rows(self.rules, content.tags, self.config.model.min_score, content.corrections, learned)

    def _writes_sidecars(self) -> bool:
        return self.config.sidecar.enabled or self.config.xmp.enabled

    def _sidecars_pending(self, shas: Sequence[str]) -> None:
        if self._writes_sidecars():
            self.store.mark_sidecars_pending(shas)

    def _rewrite_sidecars(self, on_progress: Callable[[int], None] | None = None, batch: int = 1000) -> int:
        """Sidecars of every file of the contents marked pending (this retag's, and any an
        interrupted one left), from the stored keywords; how many files."""
        if not self._writes_sidecars():
            return 0
        shas = self.store.sidecars_pending()
        written = 0
        for start in range(0, len(shas), batch):
            chunk = shas[start : start + batch]
            done: list[tuple[str, str]] = []
            for content in self.store.contents(chunk):
                image = self.store.image_facts(content.sha256)
                if image is None:
                    continue
                facts, model, weights_sha256 = image
                for path in self.store.paths_with_content(content.sha256):
                    sidecar, _ = self.write_sidecars(
                        Path(path), facts, model, weights_sha256, content.tags, content.keywords
                    )
                    if sidecar is not None:
                        done.append((path, sidecar))
                    written += 1
                    if on_progress is not None:
                        on_progress(1)
            with self.store.transaction():
                for path, sidecar in done:
                    self.store.set_sidecar(path, sidecar)
                self.store.clear_sidecars_pending(chunk)
        return written

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

