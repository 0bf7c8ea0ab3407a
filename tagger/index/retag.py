"""`tagger retag` in SQL: the stored contents read in bulk, and the model's keywords remade from the raw tags."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from tagger.index.db import Database
from tagger.index.records import StoredContent
from tagger.engine.labels import Tag
from tagger.tags.terms import ClassKeyword, Correction, KeywordRow, keyword_terms


class Retagging(Database):
    """Contents with their tags, keywords and corrections; the bulk and banded keyword rebuilds."""

    def content_count(self) -> int:
        """Distinct contents classified (images rows)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def stored_contents(self, after: str, limit: int) -> list[StoredContent]:
        """The next `limit` contents after sha256 `after`: range reads on the primary keys."""
        rows = self.conn.execute("SELECT sha256 FROM images WHERE sha256 > ? ORDER BY sha256 LIMIT ?", (after, limit))
        shas = [r[0] for r in rows]
        return self._contents(shas, "sha256 BETWEEN ? AND ?", shas[:1] + shas[-1:])

    def contents(self, shas: Sequence[str]) -> list[StoredContent]:
        """These contents (those indexed), looked up one by one."""
        ordered = sorted(set(shas))
        return self._contents(ordered, "sha256 IN (SELECT value FROM json_each(?))", [json.dumps(ordered)])

    def _contents(self, shas: list[str], where: str, params: list[str]) -> list[StoredContent]:
        if not shas:
            return []
        tags: dict[str, list[Tag]] = {sha: [] for sha in shas}
        keywords: dict[str, list[KeywordRow]] = {sha: [] for sha in shas}
        corrections: dict[str, list[Correction]] = {sha: [] for sha in shas}
        reads: tuple[tuple[str, str, dict[str, list[Any]], Callable[..., Any]], ...] = (
            ("class_id, wnid, label, label_zh, score, frame_s FROM tags", "rank", tags, Tag),
            ("keyword, keyword_zh, path, path_zh, score, source FROM keywords", "score DESC", keywords, KeywordRow),
            ("keyword, action FROM corrections", "created_at", corrections, Correction),
        )
        for columns, order, found, make in reads:
            for sha, *fields in self.conn.execute(
                f"SELECT sha256, {columns} WHERE {where} ORDER BY sha256, {order}", params
            ):
                if sha in found:
                    found[sha].append(make(*fields))
        return [StoredContent(sha, tags[sha], keywords[sha], corrections[sha]) for sha in shas]

    def corrected_contents(self) -> list[str]:
        """Indexed contents that the user has corrected."""
        rows = self.conn.execute("SELECT DISTINCT sha256 FROM corrections WHERE sha256 IN (SELECT sha256 FROM images)")
        return [r[0] for r in rows]

    def remake_keywords(
        self, classes: Sequence[ClassKeyword], bands: Sequence[tuple[int, float, float]] | None, bulk_above: int
    ) -> tuple[int, list[str]]:
        """Remake the model's keywords from the raw tags, in SQL: (contents looked at, contents changed).

        `bands` (class, low, high): only contents with a raw tag of a class scored in [low, high);
        None: every content. Over `bulk_above` contents, both tables are emptied and refilled in
        key order with the term index built afterwards (at a million contents that beats
        replacing rows one by one); fewer are replaced in place. Corrected contents are left
        for the caller to redo and are not in the answer. Call inside a transaction.
        """
        c = self.conn
        self._drop_temp()
        c.execute(
            """CREATE TEMP TABLE rule_classes (class_id INTEGER PRIMARY KEY, threshold REAL NOT NULL,
               keyword TEXT NOT NULL, keyword_zh TEXT NOT NULL, path TEXT NOT NULL, path_zh TEXT NOT NULL)"""
        )
        kept = [k for k in classes if k.threshold <= 1.0]
        c.executemany(
            "INSERT INTO temp.rule_classes VALUES (?, ?, ?, ?, ?, ?)",
            [(k.class_id, k.threshold, k.keyword, k.keyword_zh, k.path, k.path_zh) for k in kept],
        )
        c.execute(
            "CREATE TEMP TABLE rule_terms (path TEXT, path_zh TEXT, term TEXT, PRIMARY KEY (path, path_zh, term))"
        )
        c.executemany(
            "INSERT OR IGNORE INTO temp.rule_terms VALUES (?, ?, ?)",
            [(k.path, k.path_zh, term) for k in kept for term in keyword_terms(k.path, k.path_zh)],
        )
        if bands is not None:
            c.execute("CREATE TEMP TABLE touched (sha256 TEXT PRIMARY KEY) WITHOUT ROWID")
            for band in bands:
                c.execute(
                    """INSERT OR IGNORE INTO temp.touched
                       SELECT sha256 FROM tags WHERE class_id = ? AND score >= ? AND score < ?""",
                    band,
                )
            looked_at = int(c.execute("SELECT COUNT(*) FROM temp.touched").fetchone()[0])
            if looked_at <= bulk_above:
                changed = self._remake_touched()
                self._drop_temp()
                return looked_at, changed
        looked_at = self.content_count()
        changed = self._remake_all()
        self._drop_temp()
        return looked_at, changed

    def _remake_touched(self) -> list[str]:
        """The contents in temp.touched: new rows aside, compared, and the changed ones replaced."""
        c = self.conn
        c.execute("DELETE FROM temp.touched WHERE sha256 IN (SELECT sha256 FROM corrections)")
        c.execute("CREATE TEMP TABLE new_keywords AS SELECT * FROM keywords WHERE 0")
        c.execute(
            """INSERT INTO temp.new_keywords
               SELECT t.sha256, r.keyword, r.keyword_zh, r.path, r.path_zh, MAX(t.score), 'model'
               FROM temp.touched s CROSS JOIN tags t ON t.sha256 = s.sha256
               JOIN temp.rule_classes r ON r.class_id = t.class_id
               WHERE t.score >= r.threshold
               GROUP BY t.sha256, r.keyword"""
        )
        # CROSS JOIN: the touched contents drive the join (the planner knows nothing of temp tables)
        old = "SELECT k.* FROM temp.touched s CROSS JOIN keywords k ON k.sha256 = s.sha256"
        c.execute("CREATE TEMP TABLE changed (sha256 TEXT PRIMARY KEY) WITHOUT ROWID")
        c.execute(
            f"""INSERT OR IGNORE INTO temp.changed
                SELECT sha256 FROM (SELECT * FROM temp.new_keywords EXCEPT {old})
                UNION SELECT sha256 FROM ({old} EXCEPT SELECT * FROM temp.new_keywords)"""
        )
        c.execute("DELETE FROM keyword_terms WHERE sha256 IN (SELECT sha256 FROM temp.changed)")
        c.execute("DELETE FROM keywords WHERE sha256 IN (SELECT sha256 FROM temp.changed)")
        c.execute("INSERT INTO keywords SELECT n.* FROM temp.new_keywords n JOIN temp.changed USING (sha256)")
        c.execute(
            """INSERT OR IGNORE INTO keyword_terms (term, score, sha256)
               SELECT rt.term, n.score, n.sha256 FROM temp.new_keywords n JOIN temp.changed USING (sha256)
               JOIN temp.rule_terms rt ON rt.path = n.path AND rt.path_zh = n.path_zh
               ORDER BY rt.term, n.score, n.sha256"""
        )
        return [r[0] for r in c.execute("SELECT sha256 FROM temp.changed")]

    def _remake_all(self) -> list[str]:
        """Every content: both tables emptied and refilled in key order, the term index built last."""
        c = self.conn
        c.execute("CREATE TEMP TABLE old_keywords AS SELECT * FROM keywords")
        c.execute("DELETE FROM keywords")
        c.execute("DROP INDEX keyword_terms_by_sha256")
        c.execute("DELETE FROM keyword_terms")
        c.execute(
            """INSERT INTO keywords (sha256, keyword, keyword_zh, path, path_zh, score, source)
               SELECT t.sha256, r.keyword, r.keyword_zh, r.path, r.path_zh, MAX(t.score), 'model'
               FROM tags t JOIN temp.rule_classes r ON r.class_id = t.class_id
               WHERE t.score >= r.threshold
               GROUP BY t.sha256, r.keyword ORDER BY t.sha256, r.keyword"""
        )
        c.execute(
            """INSERT OR IGNORE INTO keyword_terms (term, score, sha256)
               SELECT rt.term, k.score, k.sha256
               FROM keywords k JOIN temp.rule_terms rt ON rt.path = k.path AND rt.path_zh = k.path_zh
               ORDER BY rt.term, k.score, k.sha256"""
        )
        c.execute("CREATE INDEX keyword_terms_by_sha256 ON keyword_terms(sha256, term)")
        return [
            r[0]
            for r in c.execute(
                """SELECT sha256 FROM (SELECT * FROM keywords EXCEPT SELECT * FROM temp.old_keywords)
                   UNION SELECT sha256 FROM (SELECT * FROM temp.old_keywords EXCEPT SELECT * FROM keywords)
                   EXCEPT SELECT sha256 FROM corrections"""
            )
        ]

    def _drop_temp(self) -> None:
        for table in ("rule_classes", "rule_terms", "touched", "new_keywords", "changed", "old_keywords"):
            self.conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
