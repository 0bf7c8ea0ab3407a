"""`tagger retag`: keywords recomputed from the stored raw tags (no model run) after the rules,
`model.min_score` or corrections changed, and the sidecars of what changed rewritten.

Sidecars still owed by an interrupted retag (sidecars_pending) are caught up here, by a
retag or at the start of a scan or the daemon; never by a single correction. So are those
that a change of the sidecar settings (XMP on, its naming or prefix, JSON on, sidecar.folder)
leaves out of date: every content is marked owed, in one statement, when the settings stored
in the index differ from the config's.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tagger.config import Config
from tagger.index import Index, StoredContent
from tagger.tags.keywords import changed_bands, class_keywords, keyword_rows
from tagger.library.sidecars import SidecarSettings, SidecarWriter
from tagger.tags.terms import ClassKeyword

log = logging.getLogger(__name__)

SIDECAR_SETTING = "sidecar_settings"  # the SidecarSettings every sidecar was (or is being) brought to
FORMER_SIDECARS_SETTING = "former_sidecar_settings"  # those before them, while a catch-up is owed
RULES_SETTING = "keyword_rules"  # per class, the keyword and least score that made the stored keywords
LEARNED_SETTING = "learned_keyword_rules"  # per learned tag a `learned:` rule names, what it showed as
BULK_SHARE = 0.2  # when more of the contents than this may change, rebuild all in bulk (SQL), not one by one
RETAG_CACHE_BYTES = 512 << 20  # SQLite page cache while re-tagging: keeps the keyword indexes' pages in memory
CATCH_UP_BATCH = 1000  # contents whose sidecars are rewritten, then cleared, per transaction


@dataclass
class RetagSummary:
    contents: int = 0  # looked at: the contents a changed rule can touch (all, in a bulk rebuild)
    changed: int = 0  # whose keywords changed
    sidecars: int = 0  # files whose sidecars were rewritten
    seconds: float = 0.0


class Retagger:
    """The rules of a config against the keywords stored in one index."""

    def __init__(self, config: Config, index: Index) -> None:
        self.config = config
        self.index = index
        self.rules = config.rule_set
        self.sidecars = SidecarWriter(config, index)

    def table(self) -> list[ClassKeyword]:
        return class_keywords(self.rules, self.config.model.min_score)

    def remember_settings(self, table: Sequence[ClassKeyword]) -> None:
        """Which rules made the stored keywords, for the next retag to compare (call inside a transaction)."""
        self.index.set_setting(RULES_SETTING, _dump_table(table))
        self.index.set_setting(LEARNED_SETTING, self.learned_table())

    def learned_table(self) -> str:
        """The `learned:` rules as the stored keywords of learned tags reflect them (aliases aside:
        they change no stored keyword)."""
        return json.dumps(
            {name: None if d is None else [d.name, d.name_zh, d.path, d.path_zh]
             for name, d in self.rules.learned_outcomes().items()},
            ensure_ascii=False, sort_keys=True,
        )

    def learned_changed(self) -> bool:
        """Whether the `learned:` rules differ from those that made the stored keywords.

        None stored is an index from before such rules: it had none."""
        return (self.index.setting(LEARNED_SETTING) or "{}") != self.learned_table()

    def check_settings(self) -> None:
        """Warn when the stored keywords were made by other rules or another threshold."""
        stored, current = self.index.setting(RULES_SETTING), self.table()
        if stored is None and self.index.content_count() == 0:
            with self.index.transaction():
                self.remember_settings(current)
        elif stored != _dump_table(current) or self.learned_changed():
            log.warning("rules or model.min_score changed since the stored keywords were made: run `tagger retag`")

    def retag(self, *, everything: bool = False, on_progress: Callable[[int], None] | None = None) -> RetagSummary:
        """Recompute keywords from the stored raw tags (no model run); rewrite sidecars of the contents that changed.

        The per-class table of the rules that made the stored keywords is kept in the index;
        only contents with a raw tag in a band where the old and new tables differ are looked
        at, in SQL; past BULK_SHARE of the library every keyword is rebuilt in bulk instead.
        Corrected contents, and those a learned tag found, are redone here, in Python, by the
        same steps as a scan. A change to the `learned:` rules alone redoes just the contents
        that learned tags found.
        `everything`: rebuild all. `on_progress(n)`: n more files' sidecars rewritten.
        """
        started = time.monotonic()
        summary = RetagSummary()
        self.index.grow_cache(RETAG_CACHE_BYTES)
        table = self.table()
        stored = None if everything else _load_table(self.index.setting(RULES_SETTING))
        bands = None if stored is None else changed_bands(stored, table)
        changed: list[str] = []
        learned_only = bands == [] and self.learned_changed()
        if bands != [] or learned_only:
            total = self.index.content_count()
            bulk_above = int(BULK_SHARE * total)
            log.info("re-tagging from the stored raw tags (%d images in the index, no model run)", total)
            with self.index.transaction():
                learned = self.index.vectors.learned_contents()
                if learned_only:
                    redone = self.index.contents(learned)
                    summary.contents = len(redone)
                else:
                    redone = self.index.contents([*self.index.corrected_contents(), *learned])
                    summary.contents, changed = self.index.remake_keywords(table, bands, bulk_above)
                changed += [c.sha256 for c in redone if self.redo(c)]
                if self.sidecars.enabled:
                    self.index.mark_sidecars_pending(changed)
                    if everything:  # also those another tool changed: only the files that differ are written
                        self.index.mark_all_sidecars_pending()
                self.remember_settings(table)
        summary.changed = len(changed)
        summary.sidecars = self.catch_up(on_progress)
        summary.seconds = time.monotonic() - started
        return summary

    def rekeyword(self, shas: Sequence[str], what: str, first: Callable[[], None] | None = None) -> list[str]:
        """Remake the keywords of these contents (after a correction or a learned tag changed), then
        rewrite the sidecars of those that changed; which changed.

        `first` runs in the same transaction (a correction's own row). The sidecars are marked
        owed inside it and cleared as each is written, so a crash between leaves them to the next
        retag, scan or daemon start.
        """
        with self.index.transaction(what):
            if first is not None:
                first()
            changed = [c.sha256 for c in self.index.contents(shas) if self.redo(c)]
            if changed and self.sidecars.enabled:
                self.index.mark_sidecars_pending(changed)
        if changed:
            self.sidecars.rewrite(self.index, changed)
        return changed

    def redo(self, content: StoredContent) -> bool:
        """One content through rules, learned tags and corrections, saved; whether that differs
        from `content.keywords`. Call inside a transaction."""
        learned = self.index.vectors.learned_of(content.sha256)
        rows = keyword_rows(self.rules, content.tags, self.config.model.min_score, content.corrections, learned)
        if set(rows) != set(self.index.keywords(content.sha256)):
            self.index.save_keywords(content.sha256, rows)
        return set(rows) != set(content.keywords)

    def catch_up(self, on_progress: Callable[[int], None] | None = None) -> int:
        """Sidecars of every file of the contents marked pending (this retag's, any an interrupted
        one left, all after a change of the sidecar settings), from the stored keywords; how many
        files' sidecars changed."""
        self.check_sidecar_settings()
        if not self.sidecars.enabled:
            return 0
        shas = self.index.sidecars_pending()
        written = 0
        for start in range(0, len(shas), CATCH_UP_BATCH):
            written += self.sidecars.rewrite(self.index, shas[start : start + CATCH_UP_BATCH], on_progress)
        if self.sidecars.formers:
            with self.index.transaction("the end of a change of sidecar settings"):
                self.index.delete_setting(FORMER_SIDECARS_SETTING)
            self.sidecars.formers = ()
        return written

    def check_sidecar_settings(self) -> None:
        """When the sidecar settings differ from those stored, mark every content's sidecars owed and
        keep the former settings: their leftovers (another XMP name or prefix, another sidecar.folder)
        are cleaned as each file is rewritten. An index from before these settings were stored was
        written with the defaults, as far as can be told.
        """
        current = SidecarSettings.of(self.config)
        text = self.index.setting(SIDECAR_SETTING)
        stored = SidecarSettings.load(text) if text is not None else [SidecarSettings.default()]
        formers = [f for f in SidecarSettings.load(self.index.setting(FORMER_SIDECARS_SETTING)) or [] if f != current]
        if stored != [current]:
            owed = self.index.content_count() > 0
            formers = [*formers, *(f for f in stored or [] if f != current and f not in formers)] if owed else []
            with self.index.transaction("a change of sidecar settings"):
                if owed and self.sidecars.enabled:
                    count = self.index.mark_all_sidecars_pending()
                    log.info("the sidecar settings changed: the sidecars of %d images are brought up to date", count)
                if formers:
                    self.index.set_setting(FORMER_SIDECARS_SETTING, SidecarSettings.dump(formers))
                self.index.set_setting(SIDECAR_SETTING, SidecarSettings.dump([current]))
        self.sidecars.formers = tuple(formers)


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
