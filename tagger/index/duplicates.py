"""What the duplicates task reads (tagger.vectors.duplicates): the facts of each copy, and a
cheap key that changes whenever the groups might."""
from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from tagger.index.db import fs
from tagger.index.vectors import VectorRows

IN_CHUNK = 500  # parameters per IN (...): well under SQLite's limit


@dataclass(frozen=True)
class CopyFacts:
    """One tagged file holding a content: what the duplicates page shows and the suggestion weighs."""

    path: str
    sha256: str
    size: int  # of this file, bytes
    mtime_ns: int
    width: int
    height: int


class DuplicateRows:
    """Reads over the caller's connection; nothing here writes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def state_key(self) -> tuple[object, ...]:
        """Changes with every embedding of the main model (embedding_changes' stamp, one row) and
        every tagged file added, replaced, moved or removed (count and latest updated_at: one pass
        over the files table, about 0.1 s at 300,000 files, so callers ask it every few seconds, not
        per request)."""
        vectors = VectorRows(self.conn)
        model = vectors.main_model()
        stamp = vectors.state(model).stamp if model is not None else 0
        count, latest = self.conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(updated_at), '') FROM files WHERE status = 'tagged'"
        ).fetchone()
        return (model, stamp, int(count), str(latest))

    def copies_of(self, shas: Sequence[str]) -> list[CopyFacts]:
        """The tagged files holding these contents, with their contents' pixel sizes."""
        found: list[CopyFacts] = []
        for start in range(0, len(shas), IN_CHUNK):
            part = list(shas[start : start + IN_CHUNK])
            marks = ",".join("?" * len(part))
            rows = self.conn.execute(
                f"""SELECT f.path, f.sha256, f.size, f.mtime_ns, i.width, i.height
                    FROM files f JOIN images i ON i.sha256 = f.sha256
                    WHERE f.status = 'tagged' AND f.sha256 IN ({marks})""",
                part,
            ).fetchall()
            found += [CopyFacts(str(p), str(s), int(z), int(m), int(w), int(h)) for p, s, z, m, w, h in rows]
        return found

    def copies_at(self, paths: Sequence[str]) -> dict[str, CopyFacts]:
        """The tagged files at these paths (missing: not in the index, or not tagged)."""
        found: dict[str, CopyFacts] = {}
        for path in paths:
            row = self.conn.execute(
                """SELECT f.path, f.sha256, f.size, f.mtime_ns, i.width, i.height
                   FROM files f JOIN images i ON i.sha256 = f.sha256
                   WHERE f.path = CAST(? AS TEXT) AND f.status = 'tagged'""",
                (fs(path),),
            ).fetchone()
            if row is not None:
                p, s, z, m, w, h = row
                found[path] = CopyFacts(str(p), str(s), int(z), int(m), int(w), int(h))
        return found
