"""Keywords, corrections and settings in the index, and which sidecars a retag still owes."""
from __future__ import annotations

from collections.abc import Sequence

from tagger.fileio import utc_text
from tagger.index.db import Database
from tagger.tags.terms import Action, Correction, KeywordRow


class KeywordRows(Database):
    """The keywords of one content and the words that find them; the user's corrections."""

    def keywords(self, sha256: str) -> list[KeywordRow]:
        rows = self.conn.execute(
            """SELECT keyword, keyword_zh, path, path_zh, score, source FROM keywords
               WHERE sha256 = ? ORDER BY score DESC, keyword""",
            (sha256,),
        ).fetchall()
        return [KeywordRow(*r) for r in rows]

    def corrections(self, sha256: str) -> list[Correction]:
        rows = self.conn.execute(
            "SELECT keyword, action FROM corrections WHERE sha256 = ? ORDER BY created_at, keyword", (sha256,)
        ).fetchall()
        return [Correction(*r) for r in rows]

    def save_keywords(self, sha256: str, keywords: Sequence[KeywordRow], *, replacing: bool = True) -> None:
        """Replace the keywords of one content, and the search words that find them
        (`replacing=False`: it has none yet, so there is nothing to look up and delete)."""
        if replacing:
            self.conn.execute("DELETE FROM keywords WHERE sha256 = ?", (sha256,))
            self.conn.execute("DELETE FROM keyword_terms WHERE sha256 = ?", (sha256,))
        self.conn.executemany(
            """INSERT INTO keywords (sha256, keyword, keyword_zh, path, path_zh, score, source)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            [(sha256, k.keyword, k.keyword_zh, k.path, k.path_zh, k.score, k.source) for k in keywords],
        )
        self.conn.executemany(
            "INSERT INTO keyword_terms (term, score, sha256) VALUES (?, ?, ?)",
            [(term, score, sha256) for term, score in {(t, k.score) for k in keywords for t in k.terms()}],
        )

    def save_correction(self, sha256: str, keyword: str, action: Action) -> None:
        """The latest word of the user about a keyword of this content wins."""
        self.conn.execute(
            "INSERT OR REPLACE INTO corrections (sha256, keyword, action, created_at) VALUES (?, ?, ?, ?)",
            (sha256, keyword, action, utc_text()),
        )

    def drop_removal(self, sha256: str, keyword: str) -> bool:
        """Take back the user's removal of a keyword of this content (an undo); whether there was one."""
        cursor = self.conn.execute(
            "DELETE FROM corrections WHERE sha256 = ? AND keyword = ? AND action = 'remove'", (sha256, keyword)
        )
        return cursor.rowcount > 0

    def has_term(self, term: str) -> bool:
        """Some keyword (a user's own, or a category) is found by this search word."""
        row = self.conn.execute("SELECT 1 FROM keyword_terms WHERE term = ? LIMIT 1", (term,)).fetchone()
        return row is not None

    def setting(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    def delete_setting(self, key: str) -> None:
        self.conn.execute("DELETE FROM settings WHERE key = ?", (key,))

    def mark_all_sidecars_pending(self) -> int:
        """Every classified content's sidecars owed (the sidecar settings changed); how many contents."""
        self.conn.execute("INSERT OR IGNORE INTO sidecars_pending (sha256) SELECT sha256 FROM images")
        return int(self.conn.execute("SELECT COUNT(*) FROM sidecars_pending").fetchone()[0])

    def mark_sidecars_pending(self, shas: Sequence[str]) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO sidecars_pending (sha256) VALUES (?)", [(s,) for s in shas])

    def sidecars_pending(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT sha256 FROM sidecars_pending")]

    def clear_sidecars_pending(self, shas: Sequence[str]) -> None:
        self.conn.executemany("DELETE FROM sidecars_pending WHERE sha256 = ?", [(s,) for s in shas])
