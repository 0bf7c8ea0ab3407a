"""The tag browser's reads: files and a cover image per keyword, per category and per learned tag.

Each is one grouped query over a whole table (keywords, keyword_terms, learned_matches) joined to
the tagged files, never a query per tag or per image; the viewer keeps the answer until a writer
commits (tagger.web.tagcounts).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from tagger.tags.terms import Source

CHUNK = 500  # terms per statement: well under SQLite's limit of bound parameters


@dataclass(frozen=True)
class KeywordCount:
    """A keyword as stored (its place in the hierarchy), the tagged files holding it, and the
    content where it scores best: its cover."""

    keyword: str
    keyword_zh: str
    path: str
    path_zh: str
    source: Source
    files: int
    cover: str  # sha256


@dataclass(frozen=True)
class TermCount:
    """The tagged files a search word finds (a category: every keyword below it), and a cover."""

    term: str
    files: int
    cover: str


@dataclass(frozen=True)
class LearnedCount:
    """A learned tag, the tagged files it matches, and its best match (None: no match yet)."""

    name: str
    files: int
    cover: str | None


class TagBrowserRows:
    """Reads over the index's connection (like VectorRows)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def keyword_counts(self) -> list[KeywordCount]:
        """Every stored keyword with its tagged files, most common first. The cover is the row
        with the best score (SQLite takes bare columns from the row that gives MAX)."""
        rows = self.conn.execute(
            """SELECT k.keyword, k.keyword_zh, k.path, k.path_zh, k.source, COUNT(*) AS n, k.sha256, MAX(k.score)
               FROM keywords k JOIN files f ON f.sha256 = k.sha256 AND f.status = 'tagged'
               GROUP BY k.source, k.path ORDER BY n DESC, k.path"""
        ).fetchall()
        return [KeywordCount(kw, zh, path, path_zh, source, int(n), sha) for kw, zh, path, path_zh, source, n, sha, _ in rows]

    def term_counts(self, terms: Sequence[str]) -> dict[str, TermCount]:
        """Per search word (casefolded, as keyword_terms keeps them): the tagged files it finds,
        each counted once, and the content where it scores best."""
        found: dict[str, TermCount] = {}
        unique = sorted(set(terms))
        for start in range(0, len(unique), CHUNK):
            part = unique[start : start + CHUNK]
            marks = ",".join("?" * len(part))
            for term, n, sha, _ in self.conn.execute(
                f"""SELECT kt.term, COUNT(DISTINCT f.path), kt.sha256, MAX(kt.score)
                    FROM keyword_terms kt JOIN files f ON f.sha256 = kt.sha256 AND f.status = 'tagged'
                    WHERE kt.term IN ({marks}) GROUP BY kt.term""",
                part,
            ):
                found[term] = TermCount(term, int(n), sha)
        return found

    def learned_counts(self) -> list[LearnedCount]:
        """Every learned tag, by name, with the tagged files it matches (0 and no cover: none yet)."""
        rows = self.conn.execute(
            """SELECT t.name, COUNT(x.path), x.sha256, MAX(x.score) FROM learned_tags t LEFT JOIN
                 (SELECT m.name, m.sha256, m.score, f.path FROM learned_matches m
                  JOIN files f ON f.sha256 = m.sha256 AND f.status = 'tagged') x ON x.name = t.name
               GROUP BY t.name ORDER BY t.name"""
        ).fetchall()
        return [LearnedCount(name, int(n), sha) for name, n, sha, _ in rows]
