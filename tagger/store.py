"""The SQLite index. Every SQL statement of tagger lives in this module.

One writer (the scanner or daemon) and any number of read-only readers (query, viewer).
WAL lets readers run while a scan writes. An image is keyed by its content hash, so a
copy or a re-scan costs a hash, not a model run.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tagger.labels import Tag
from tagger.errors import StoreError
from tagger.sidecar import ImageFacts

MIGRATIONS: tuple[str, ...] = (
    # 1: images by content, their top-k tags, files pointing at them (or at their error).
    """
    CREATE TABLE images (
        sha256         TEXT PRIMARY KEY,
        size           INTEGER NOT NULL,
        width          INTEGER NOT NULL,
        height         INTEGER NOT NULL,
        model          TEXT NOT NULL,
        weights_sha256 TEXT NOT NULL,
        classified_at  TEXT NOT NULL
    );
    CREATE TABLE tags (
        sha256   TEXT NOT NULL REFERENCES images(sha256) ON DELETE CASCADE,
        rank     INTEGER NOT NULL,
        class_id INTEGER NOT NULL,
        wnid     TEXT NOT NULL,
        label    TEXT NOT NULL,
        label_zh TEXT NOT NULL,
        score    REAL NOT NULL,
        PRIMARY KEY (sha256, rank)
    ) WITHOUT ROWID;
    CREATE INDEX tags_by_class ON tags(class_id, score);
    CREATE TABLE files (
        path       TEXT PRIMARY KEY,
        sha256     TEXT,
        size       INTEGER NOT NULL,
        mtime_ns   INTEGER NOT NULL,
        status     TEXT NOT NULL CHECK (status IN ('tagged', 'failed')),
        error      TEXT,
        sidecar    TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX files_by_sha256 ON files(sha256);
    CREATE VIEW file_tags AS
        SELECT f.path, t.rank, t.class_id, t.wnid, t.label, t.label_zh, t.score, i.model
        FROM files f JOIN images i ON i.sha256 = f.sha256 JOIN tags t ON t.sha256 = f.sha256
        WHERE f.status = 'tagged';
    """,
)


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str | None
    size: int
    mtime_ns: int
    status: str
    error: str | None
    sidecar: str | None
    model: str | None


@dataclass(frozen=True)
class CachedImage:
    facts: ImageFacts
    model: str
    weights_sha256: str
    tags: list[Tag]


@dataclass(frozen=True)
class TaggedFile:
    path: str
    sha256: str
    model: str
    tags: list[Tag]


@dataclass(frozen=True)
class Failure:
    path: str
    error: str


@dataclass(frozen=True)
class Stats:
    files_tagged: int
    files_failed: int
    images: int
    models: dict[str, int]
    top_labels: list[tuple[str, str, int]]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Store:
        """The writer creates and migrates; readers open `mode=ro` and never block the writer."""
        try:
            if readonly:
                if not path.exists():
                    raise StoreError(f"{path}: no index yet (run `tagger scan` first)")
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            store = cls(conn, path, readonly)
            if readonly:
                store._check_version()
            else:
                store._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open index: {exc}") from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot create index: {exc.strerror or exc}") from None
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes go through here: committed whole or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def schema_version(self) -> int:
        row = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if row is None:
            return 0
        return int(self.conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])

    def _check_version(self) -> None:
        version = self.schema_version()
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path}: index schema {version} is newer than this tagger ({len(MIGRATIONS)})")

    def _migrate(self) -> None:
        """Each migration commits together with its version row, so a crash never leaves half a schema."""
        with self.transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
        self._check_version()
        for version, script in enumerate(MIGRATIONS, start=1):
            if version <= self.schema_version():
                continue
            with self.transaction() as conn:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, _now()))

    # -- reads ---------------------------------------------------------------------------

    def file_record(self, path: str) -> FileRecord | None:
        row = self.conn.execute(
            """SELECT f.path, f.sha256, f.size, f.mtime_ns, f.status, f.error, f.sidecar, i.model
               FROM files f LEFT JOIN images i ON i.sha256 = f.sha256 WHERE f.path = ?""",
            (path,),
        ).fetchone()
        return FileRecord(*row) if row else None

    def cached_image(self, sha256: str, model: str) -> CachedImage | None:
        row = self.conn.execute(
            "SELECT size, width, height, model, weights_sha256 FROM images WHERE sha256 = ? AND model = ?",
            (sha256, model),
        ).fetchone()
        if row is None:
            return None
        size, width, height, model_name, weights_sha256 = row
        return CachedImage(ImageFacts(sha256, size, width, height), model_name, weights_sha256, self._tags(sha256))

    def _tags(self, sha256: str, min_score: float = 0.0) -> list[Tag]:
        rows = self.conn.execute(
            """SELECT class_id, wnid, label, label_zh, score FROM tags
               WHERE sha256 = ? AND score >= ? ORDER BY rank""",
            (sha256, min_score),
        ).fetchall()
        return [Tag(*r) for r in rows]

    def paths_under(self, root: str) -> list[str]:
        """Indexed paths inside folder `root` (a range scan on the primary key)."""
        prefix = root.rstrip("/") + "/"
        rows = self.conn.execute(
            "SELECT path FROM files WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + "0")
        ).fetchall()
        return [r[0] for r in rows]

    def query(self, class_groups: Sequence[Sequence[int]], min_score: float, limit: int | None) -> list[TaggedFile]:
        """Files having, for every group, at least one of its classes at `min_score` or more.

        Best first: ordered by the score of the first group's match.
        """
        params: list[object] = []
        if class_groups:
            first, *rest = class_groups
            sql = [
                """SELECT f.path, f.sha256, i.model, MAX(t0.score) AS best
                   FROM tags t0 JOIN files f ON f.sha256 = t0.sha256 JOIN images i ON i.sha256 = f.sha256""",
                f"WHERE f.status = 'tagged' AND t0.class_id IN ({_marks(first)}) AND t0.score >= ?",
            ]
            params += [*first, min_score]
            for group in rest:
                sql.append(
                    f"""AND EXISTS (SELECT 1 FROM tags t WHERE t.sha256 = f.sha256
                        AND t.class_id IN ({_marks(group)}) AND t.score >= ?)"""
                )
                params += [*group, min_score]
            sql.append("GROUP BY f.path ORDER BY best DESC, f.path")
        else:
            sql = [
                """SELECT f.path, f.sha256, i.model, 0 FROM files f JOIN images i ON i.sha256 = f.sha256
                   WHERE f.status = 'tagged' ORDER BY f.path"""
            ]
        if limit is not None:
            sql.append("LIMIT ?")
            params.append(limit)
        rows = self.conn.execute("\n".join(sql), params).fetchall()
        return [TaggedFile(path, sha, model, self._tags(sha, min_score)) for path, sha, model, _ in rows]

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
        return Stats(counts.get("tagged", 0), counts.get("failed", 0), images, models, [tuple(r) for r in labels])

    # -- writes (call inside `transaction()`) ------------------------------------------------

    def save_image(self, facts: ImageFacts, model: str, weights_sha256: str, tags: Sequence[Tag]) -> None:
        """Replace whatever an earlier model said about this content."""
        self.conn.execute("DELETE FROM tags WHERE sha256 = ?", (facts.sha256,))
        self.conn.execute(
            """INSERT OR REPLACE INTO images (sha256, size, width, height, model, weights_sha256, classified_at)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (facts.sha256, facts.size, facts.width, facts.height, model, weights_sha256, _now()),
        )
        self.conn.executemany(
            """INSERT INTO tags (sha256, rank, class_id, wnid, label, label_zh, score)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            [(facts.sha256, rank, t.class_id, t.wnid, t.label, t.label_zh, t.score) for rank, t in enumerate(tags)],
        )

    def save_file(
        self, path: str, sha256: str, size: int, mtime_ns: int, sidecar: str | None, note: str | None = None
    ) -> None:
        """A tagged file; `note` says why its sidecar is missing, if it is."""
        self.conn.execute(
            """INSERT OR REPLACE INTO files (path, sha256, size, mtime_ns, status, error, sidecar, updated_at)
               VALUES (?, ?, ?, ?, 'tagged', ?, ?, ?)""",
            (path, sha256, size, mtime_ns, note, sidecar, _now()),
        )

    def save_failure(self, path: str, sha256: str | None, size: int, mtime_ns: int, error: str) -> None:
        self.conn.execute(
            """INSERT OR REPLACE INTO files (path, sha256, size, mtime_ns, status, error, sidecar, updated_at)
               VALUES (?, ?, ?, ?, 'failed', ?, NULL, ?)""",
            (path, sha256, size, mtime_ns, error, _now()),
        )

    def delete_files(self, paths: Sequence[str]) -> None:
        self.conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])

    def delete_tree(self, folder: str) -> int:
        prefix = folder.rstrip("/") + "/"
        cursor = self.conn.execute("DELETE FROM files WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + "0"))
        return cursor.rowcount

    def move_file(self, src: str, dst: str) -> bool:
        """The row follows the file; False when `src` was not indexed."""
        self.conn.execute("DELETE FROM files WHERE path = ?", (dst,))
        cursor = self.conn.execute("UPDATE files SET path = ?, updated_at = ? WHERE path = ?", (dst, _now(), src))
        return cursor.rowcount > 0

    def move_tree(self, src: str, dst: str) -> int:
        """Every row under folder `src` moves under `dst` (a renamed or moved folder)."""
        old, new = src.rstrip("/") + "/", dst.rstrip("/") + "/"
        self.conn.execute("DELETE FROM files WHERE path >= ? AND path < ?", (new, new[:-1] + "0"))
        cursor = self.conn.execute(
            """UPDATE files SET path = ? || substr(path, ?), updated_at = ?
               WHERE path >= ? AND path < ?""",
            (new, len(old) + 1, _now(), old, old[:-1] + "0"),
        )
        return cursor.rowcount

    def set_sidecar(self, path: str, sidecar: str | None) -> None:
        self.conn.execute("UPDATE files SET sidecar = ? WHERE path = ?", (sidecar, path))


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))
