"""Counts for `tagger stats`, status lines and the viewer's tag list."""
from __future__ import annotations

from collections.abc import Sequence

from tagger.index.db import Database, folder_range
from tagger.index.records import Failure, Stats, TagCount
from tagger.engine.labels import imagenet_classes


class StatsReads(Database):
    """Whole-library counts, each read from the smallest index or table that holds it."""

    def counts(self) -> tuple[int, int]:
        """(tagged, failed) files: cheap enough for a status line."""
        rows = dict(self.conn.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall())
        return rows.get("tagged", 0), rows.get("failed", 0)

    def failures(self) -> list[Failure]:
        rows = self.conn.execute("SELECT path, error FROM files WHERE status = 'failed' ORDER BY path").fetchall()
        return [Failure(*r) for r in rows]

    def stats(self, top: int = 10) -> Stats:
        counts = dict(self.conn.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall())
        images = self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        models = dict(self.conn.execute("SELECT model, COUNT(*) FROM images GROUP BY model").fetchall())
        labels = self.conn.execute(
            """SELECT t.label, t.label_zh, COUNT(*) AS n FROM files f JOIN tags t ON t.sha256 = f.sha256
               WHERE f.status = 'tagged' AND t.rank = 0 GROUP BY t.class_id ORDER BY n DESC, t.label LIMIT ?""",
            (top,),
        ).fetchall()
        unused = self.conn.execute(
            "SELECT COUNT(*) FROM images i WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.sha256 = i.sha256)"
        ).fetchone()[0]
        return Stats(
            counts.get("tagged", 0), counts.get("failed", 0), images, unused, models, [tuple(r) for r in labels]
        )

    def tag_counts(self, min_score: float) -> list[TagCount]:
        """Tagged files per class whose tag scores `min_score` or more (rounded down to a percent),
        most common first. Kept up to date by triggers (migration 4): no scan of the files."""
        rows = self.conn.execute(
            """SELECT class_id, SUM(files) AS n FROM tag_counts WHERE percent >= ?
               GROUP BY class_id HAVING n > 0 ORDER BY n DESC, class_id""",
            (int(min_score * 100 + 1e-9),),
        ).fetchall()
        classes = imagenet_classes()
        return [TagCount(c, classes[c].wnid, classes[c].label, classes[c].label_zh, n) for c, n in rows]

    def tagged_count(self, folder: str | None = None) -> int:
        """Files tagged (inside `folder`), read from the smallest index that holds exactly them."""
        if folder is not None:
            return int(self.conn.execute(
                """SELECT COUNT(*) FROM files INDEXED BY files_tagged_by_path
                   WHERE status = 'tagged' AND path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)""",
                folder_range(folder),
            ).fetchone()[0])
        row = self.conn.execute(
            "SELECT COUNT(*) FROM files INDEXED BY files_tagged_by_mtime WHERE status = 'tagged'"
        ).fetchone()
        return int(row[0])

    def months(self, folder: str | None = None) -> list[tuple[str, int]]:
        """Tagged files per month of their modification time ("YYYY-MM", UTC as `date:` queries),
        newest first: the grid's timeline. Read from a covering index, not the rows."""
        if folder is None:
            source, params = "files INDEXED BY files_tagged_by_mtime WHERE status = 'tagged'", []
        else:
            source = "files INDEXED BY files_tagged_by_path WHERE status = 'tagged' AND path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)"
            params = folder_range(folder)
        rows = self.conn.execute(
            f"""SELECT strftime('%Y-%m', mtime_ns / 1000000000, 'unixepoch') AS month, COUNT(*) FROM {source}
                GROUP BY month ORDER BY month DESC""",
            params,
        ).fetchall()
        return [(m, n) for m, n in rows if m is not None]

    def copies(self, contents: Sequence[str]) -> dict[str, int]:
        """Tagged files per content, for the contents that more than one file holds."""
        found: dict[str, int] = {}
        for start in range(0, len(contents), 500):
            chunk = list(contents[start : start + 500])
            found.update((sha, n) for sha, n in self.conn.execute(
                f"""SELECT sha256, COUNT(*) FROM files WHERE status = 'tagged'
                    AND sha256 IN ({", ".join("?" * len(chunk))}) GROUP BY sha256 HAVING COUNT(*) > 1""",
                chunk,
            ))
        return found
