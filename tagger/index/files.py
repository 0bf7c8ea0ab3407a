"""Files and their contents in the index: what a scan and the daemon write, and read back per file."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from tagger.fileio import utc_text
from tagger.index.db import Database, folder_range, fs
from tagger.index.records import CachedImage, FileRecord, FileStamp, FolderRow, ImageDetail
from tagger.engine.labels import Tag
from tagger.index.records import ImageFacts


class FileRows(Database):
    """Per file: its record, its content's facts and tags; saving, moving and forgetting files."""

    def file_record(self, path: str) -> FileRecord | None:
        row = self.conn.execute(
            """SELECT f.path, f.sha256, f.size, f.mtime_ns, f.status, f.error, f.sidecar, i.model, f.ctime_ns, f.inode
               FROM files f LEFT JOIN images i ON i.sha256 = f.sha256 WHERE f.path = CAST(? AS TEXT)""",
            (fs(path),),
        ).fetchone()
        return FileRecord(*row[:8], ctime_ns=row[8], inode=row[9]) if row else None

    def save_stamps(self, stamps: Sequence[tuple[str, FileStamp]]) -> None:
        """The ctime and inode of files recorded before they were kept (size and mtime unchanged)."""
        self.conn.executemany(
            "UPDATE files SET ctime_ns = ?, inode = ? WHERE path = CAST(? AS TEXT)",
            [(stamp.ctime_ns, stamp.inode, fs(path)) for path, stamp in stamps],
        )

    def image_facts(self, sha256: str) -> tuple[ImageFacts, str, str] | None:
        """(facts, model, weights sha256) of a classified content."""
        row = self.conn.execute(
            "SELECT size, width, height, duration, model, weights_sha256 FROM images WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return None if row is None else (ImageFacts(sha256, *row[:4]), row[4], row[5])

    def cached_image(self, sha256: str, model: str) -> CachedImage | None:
        row = self.conn.execute(
            "SELECT size, width, height, duration, model, weights_sha256 FROM images WHERE sha256 = ? AND model = ?",
            (sha256, model),
        ).fetchone()
        if row is None:
            return None
        size, width, height, duration, model_name, weights_sha256 = row
        facts = ImageFacts(sha256, size, width, height, duration)
        return CachedImage(facts, model_name, weights_sha256, self._tags(sha256))

    def _tags(self, sha256: str, min_score: float = 0.0) -> list[Tag]:
        rows = self.conn.execute(
            """SELECT class_id, wnid, label, label_zh, score, frame_s FROM tags
               WHERE sha256 = ? AND score >= ? ORDER BY rank""",
            (sha256, min_score),
        ).fetchall()
        return [Tag(*r) for r in rows]

    def image_detail(self, path: str) -> ImageDetail | None:
        """Everything the index knows about one file, with all of its stored tags."""
        row = self.conn.execute(
            """SELECT f.path, f.sha256, f.size, f.mtime_ns, f.status, f.error, f.sidecar, i.model,
                      i.width, i.height, i.classified_at, i.duration
               FROM files f LEFT JOIN images i ON i.sha256 = f.sha256 WHERE f.path = CAST(? AS TEXT)""",
            (fs(path),),
        ).fetchone()
        if row is None:
            return None
        path, sha256, size, mtime_ns, status, error, sidecar, model, width, height, classified_at, duration = row
        tags = self._tags(sha256) if status == "tagged" else []
        return ImageDetail(
            path, sha256, size, mtime_ns, status, error, sidecar, model, width, height, classified_at, tags, duration
        )

    def poster_time(self, sha256: str) -> float | None:
        """Seconds into a clip of its best tag's frame (its poster); None for a still image."""
        row = self.conn.execute("SELECT frame_s FROM tags WHERE sha256 = ? AND rank = 0", (sha256,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def paths_with_content(self, sha256: str) -> list[str]:
        """Tagged files holding this content (a thumbnail can be made from any of them)."""
        rows = self.conn.execute(
            "SELECT path FROM files WHERE sha256 = ? AND status = 'tagged' ORDER BY path", (sha256,)
        ).fetchall()
        return [r[0] for r in rows]

    def paths_under(self, root: str) -> list[str]:
        """Indexed paths inside folder `root` (a range scan on the primary key)."""
        prefix = root.rstrip("/") + "/"
        rows = self.conn.execute(
            "SELECT path FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)",
            (fs(prefix), fs(prefix[:-1] + "0")),
        ).fetchall()
        return [r[0] for r in rows]

    def folder_rows(self, folder: str) -> tuple[dict[str, FolderRow], list[str]]:
        """The rows of the files directly in `folder`, by name, and the names of its subfolders that
        hold rows: a scan's view of one folder. Each subfolder's rows are stepped over with one seek
        (the range ends at name + '0', '/' + 1), so a folder costs its own rows, not its subtree's."""
        prefix = folder.rstrip("/") + "/"
        low, high = folder_range(folder)
        rows: dict[str, FolderRow] = {}
        subfolders: list[str] = []
        while True:
            cursor = self.conn.execute(
                """SELECT f.path, f.size, f.mtime_ns, f.ctime_ns, f.inode, f.status, i.model, f.sidecar
                   FROM files f LEFT JOIN images i ON i.sha256 = f.sha256
                   WHERE f.path >= CAST(? AS TEXT) AND f.path < CAST(? AS TEXT) ORDER BY f.path""",
                (low, high),
            )
            for path, *state in cursor:
                name = path[len(prefix):]
                sub, slash, _ = name.partition("/")
                if slash:
                    subfolders.append(sub)
                    low = fs(prefix + sub + "0")
                    break
                rows[name] = FolderRow(*state)
            else:
                return rows, subfolders
            cursor.close()

    def paths_after(self, folder: str, after: str | None, limit: int) -> list[str]:
        """Up to `limit` indexed paths inside `folder`, in order, past `after`: a subtree a page at a time."""
        low, high = folder_range(folder)
        rows = self.conn.execute(
            "SELECT path FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT) "
            "AND path > CAST(? AS TEXT) ORDER BY path LIMIT ?",
            (low, high, fs(after) if after is not None else low, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def count_under(self, folder: str) -> int:
        """How many files inside `folder` are indexed."""
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)", folder_range(folder)
        ).fetchone()[0])

    def save_sidecars(self, sidecars: Sequence[tuple[str, str | None]]) -> None:
        """(path, sidecar) of files whose recorded sidecar path was stale (a folder renamed)."""
        self.conn.executemany(
            "UPDATE files SET sidecar = CAST(? AS TEXT) WHERE path = CAST(? AS TEXT)",
            [(None if sidecar is None else fs(sidecar), fs(path)) for path, sidecar in sidecars],
        )

    def tagged_beside(self, path: str) -> list[tuple[str, str]]:
        """(path, sha256) of the other tagged files in `path`'s folder with its name but for the
        extension (IMG_1.JPG beside IMG_1.CR2): a range scan on the primary key, no folder listing."""
        folder, _, name = path.rpartition("/")
        stem = name.rpartition(".")[0] or name
        prefix = f"{folder}/{stem}."
        rows = self.conn.execute(
            "SELECT path, sha256 FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT) "
            "AND status = 'tagged' AND sha256 IS NOT NULL",
            (fs(prefix), fs(prefix[:-1] + "/")),  # '/' follows '.': every name that starts with the prefix
        ).fetchall()
        return [(p, sha) for p, sha in rows if p != path and "/" not in p[len(prefix):] and "." not in p[len(prefix):]]

    def save_image(self, facts: ImageFacts, model: str, weights_sha256: str, tags: Sequence[Tag]) -> None:
        """Replace whatever an earlier model said about this content."""
        self.conn.execute("DELETE FROM tags WHERE sha256 = ?", (facts.sha256,))
        self.conn.execute(
            """INSERT OR REPLACE INTO images (sha256, size, width, height, duration, model, weights_sha256, classified_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (facts.sha256, facts.size, facts.width, facts.height, facts.duration, model, weights_sha256, utc_text()),
        )
        self.conn.executemany(
            """INSERT INTO tags (sha256, rank, class_id, wnid, label, label_zh, score, frame_s)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            [(facts.sha256, rank, t.class_id, t.wnid, t.label, t.label_zh, t.score, t.frame_s)
             for rank, t in enumerate(tags)],
        )

    def save_file(
        self,
        path: str,
        sha256: str,
        size: int,
        mtime_ns: int,
        sidecar: str | None,
        note: str | None = None,
        stamp: FileStamp | None = None,
    ) -> None:
        """A tagged file; `note` says why its sidecar is missing, if it is."""
        ctime_ns, inode = (stamp.ctime_ns, stamp.inode) if stamp else (None, None)
        self.conn.execute(
            """INSERT OR REPLACE INTO files (path, sha256, size, mtime_ns, status, error, sidecar, updated_at, added_at,
                                             ctime_ns, inode)
               VALUES (CAST(? AS TEXT), ?, ?, ?, 'tagged', ?, CAST(? AS TEXT), ?,
                       COALESCE((SELECT added_at FROM files WHERE path = CAST(? AS TEXT)), ?), ?, ?)""",
            (fs(path), sha256, size, mtime_ns, note, None if sidecar is None else fs(sidecar), utc_text(), fs(path),
             utc_text(), ctime_ns, inode),
        )

    def save_failure(
        self, path: str, sha256: str | None, size: int, mtime_ns: int, error: str, stamp: FileStamp | None = None
    ) -> None:
        ctime_ns, inode = (stamp.ctime_ns, stamp.inode) if stamp else (None, None)
        self.conn.execute(
            """INSERT OR REPLACE INTO files (path, sha256, size, mtime_ns, status, error, sidecar, updated_at, added_at,
                                             ctime_ns, inode)
               VALUES (CAST(? AS TEXT), ?, ?, ?, 'failed', ?, NULL, ?,
                       COALESCE((SELECT added_at FROM files WHERE path = CAST(? AS TEXT)), ?), ?, ?)""",
            (fs(path), sha256, size, mtime_ns, error, utc_text(), fs(path), utc_text(), ctime_ns, inode),
        )

    def contents_of(self, paths: Sequence[str]) -> set[str]:
        """The contents (sha256) these files hold."""
        found: set[str] = set()
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            found.update(r[0] for r in self.conn.execute(
                f"SELECT sha256 FROM files WHERE sha256 IS NOT NULL AND path IN ({', '.join(['CAST(? AS TEXT)'] * len(chunk))})",
                [fs(p) for p in chunk],
            ))
        return found

    def contents_under(self, folder: str) -> set[str]:
        prefix = folder.rstrip("/") + "/"
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT sha256 FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT) AND sha256 IS NOT NULL",
            (fs(prefix), fs(prefix[:-1] + "0")),
        )}

    def unheld(self, contents: Iterable[str]) -> list[str]:
        """Those of these contents that no file holds any more."""
        return [sha for sha in contents
                if self.conn.execute("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", (sha,)).fetchone() is None]

    def delete_files(self, paths: Sequence[str]) -> None:
        self.conn.executemany("DELETE FROM files WHERE path = CAST(? AS TEXT)", [(fs(p),) for p in paths])

    def delete_tree(self, folder: str) -> int:
        prefix = folder.rstrip("/") + "/"
        cursor = self.conn.execute(
            "DELETE FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)", (fs(prefix), fs(prefix[:-1] + "0"))
        )
        return cursor.rowcount

    def move_file(self, src: str, dst: str) -> bool:
        """The row follows the file; False when `src` was not indexed."""
        self.conn.execute("DELETE FROM files WHERE path = CAST(? AS TEXT)", (fs(dst),))
        cursor = self.conn.execute(
            "UPDATE files SET path = CAST(? AS TEXT), updated_at = ? WHERE path = CAST(? AS TEXT)", (fs(dst), utc_text(), fs(src))
        )
        return cursor.rowcount > 0

    def move_tree(self, src: str, dst: str, sidecars: tuple[str, str] | None = None) -> int:
        """Every row under folder `src` moves under `dst` (a renamed or moved folder), and their recorded
        sidecar paths from folder `sidecars[0]` to `sidecars[1]`: by default `src` and `dst` (sidecars
        beside the images); with sidecar.folder, their places in its mirror tree."""
        old, new = src.rstrip("/") + "/", dst.rstrip("/") + "/"
        self.conn.execute(
            "DELETE FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)", (fs(new), fs(new[:-1] + "0"))
        )
        old_sc, new_sc = (folder.rstrip("/") + "/" for folder in (sidecars or (src, dst)))
        cursor = self.conn.execute(  # substr of the bytes: a name that is not UTF-8 has no characters to count
            """UPDATE files SET path = CAST(CAST(? AS BLOB) || substr(CAST(path AS BLOB), ?) AS TEXT), updated_at = ?,
                      sidecar = CASE WHEN sidecar >= CAST(? AS TEXT) AND sidecar < CAST(? AS TEXT)
                                THEN CAST(CAST(? AS BLOB) || substr(CAST(sidecar AS BLOB), ?) AS TEXT) ELSE sidecar END
               WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)""",
            (os.fsencode(new), len(os.fsencode(old)) + 1, utc_text(),
             fs(old_sc), fs(old_sc[:-1] + "0"), os.fsencode(new_sc), len(os.fsencode(old_sc)) + 1,
             fs(old), fs(old[:-1] + "0")),
        )
        return cursor.rowcount

    def set_sidecar(self, path: str, sidecar: str | None) -> None:
        self.conn.execute(
            "UPDATE files SET sidecar = CAST(? AS TEXT) WHERE path = CAST(? AS TEXT)",
            (None if sidecar is None else fs(sidecar), fs(path)),
        )
