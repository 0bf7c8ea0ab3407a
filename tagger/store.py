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
    # 2: the viewer: newest-first and most-confident-first pages walk an index instead of
    # sorting every file (tags_top_by_score holds each image's best guess, rank 0).
    """
    CREATE INDEX files_tagged_by_mtime ON files(mtime_ns, path) WHERE status = 'tagged';
    CREATE INDEX tags_top_by_score ON tags(score) WHERE rank = 0;
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


# The grid's orders: key column and direction; ties are broken by path in the same direction.
SORTS: dict[str, tuple[str, str]] = {
    "newest": ("f.mtime_ns", "DESC"),
    "oldest": ("f.mtime_ns", "ASC"),
    "score": ("t.score", "DESC"),
    "name": ("f.path", "ASC"),
}
# A filter matching fewer rows than this (a rare tag, a small folder) is fetched whole and
# sorted; a wider one walks the sort's own index until a page is full.
FEW_ROWS = 20_000

SortKey = tuple[float | int | str, str]  # (the sort column's value, path) of a file in a listing


@dataclass(frozen=True)
class Listing:
    """Which files the viewer lists and in which order."""

    groups: tuple[tuple[int, ...], ...] = ()  # every group must match (a tag term -> its classes)
    min_score: float = 0.0  # for the tag a card shows: the first group's match, else the top tag
    folder: str | None = None  # only files under this folder
    sort: str = "newest"


@dataclass(frozen=True)
class GridItem:
    path: str
    sha256: str
    size: int
    mtime_ns: int
    width: int
    height: int
    tag: Tag  # the best match of the first searched tag, or the image's top tag
    key: SortKey  # the cursor of the page that follows this file


@dataclass(frozen=True)
class ImageDetail:
    path: str
    sha256: str | None
    size: int
    mtime_ns: int
    status: str
    error: str | None
    sidecar: str | None
    width: int | None
    height: int | None
    model: str | None
    classified_at: str | None
    tags: list[Tag]


@dataclass(frozen=True)
class TagCount:
    class_id: int
    wnid: str
    label: str
    label_zh: str
    count: int


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

    # -- viewer reads --------------------------------------------------------------------------

    def browse(
        self,
        listing: Listing,
        limit: int,
        after: SortKey | None = None,
        *,
        backwards: bool = False,
        only: str | None = None,
    ) -> list[GridItem]:
        """The `limit` files that follow `after` in the listing's order.

        A keyset page (WHERE key < last key, never OFFSET): as fast a million files deep as on
        the first page, and no file is skipped or repeated when others arrive meanwhile.
        `backwards` walks towards the start (the previous image); `only` keeps one path
        (to learn its key).
        """
        column, direction = SORTS[listing.sort]
        if backwards:
            direction = "ASC" if direction == "DESC" else "DESC"
        where, params = self._listing_filter(listing)
        if after is not None:
            op = "<" if direction == "DESC" else ">"
            value, path = after
            if column == "f.path":
                where.append(f"f.path {op} ?")
                params.append(path)
            else:
                where.append(f"{column} {op}= ? AND ({column} {op} ? OR f.path {op} ?)")
                params += [value, value, path]
        if only is not None:
            where.append("f.path = ?")
            params.append(only)
        rows = self.conn.execute(
            f"""SELECT f.path, f.sha256, f.size, f.mtime_ns, i.width, i.height,
                       t.class_id, t.wnid, t.label, t.label_zh, t.score, {column}
                FROM {self._walk(listing)} CROSS JOIN images i
                WHERE i.sha256 = f.sha256 AND {" AND ".join(where)}
                ORDER BY {column} {direction}, f.path {direction} LIMIT ?""",
            [*params, limit],
        ).fetchall()
        return [
            GridItem(path, sha, size, mtime, width, height, Tag(*tag), (key, path))
            for path, sha, size, mtime, width, height, *tag, key in rows
        ]

    def _listing_filter(self, listing: Listing) -> tuple[list[str], list[object]]:
        """WHERE terms giving one row per file, `t` being the tag its card shows."""
        where = ["f.status = 'tagged'", "t.sha256 = f.sha256", "t.score >= ?"]
        params: list[object] = [listing.min_score]
        if listing.groups:
            first, *rest = listing.groups
            where.append(f"t.class_id IN ({_marks(first)})")
            params += first
            if len(first) > 1:  # several of its classes may match one image: show the best (lowest rank)
                where.append(
                    f"""NOT EXISTS (SELECT 1 FROM tags b INDEXED BY sqlite_autoindex_tags_1 WHERE b.sha256 = t.sha256 AND b.rank < t.rank
                        AND b.class_id IN ({_marks(first)}))"""
                )
                params += first
            for group in rest:
                where.append(
                    f"""EXISTS (SELECT 1 FROM tags x INDEXED BY sqlite_autoindex_tags_1 WHERE x.sha256 = f.sha256
                        AND x.class_id IN ({_marks(group)}) AND x.score >= ?)"""
                )
                params += [*group, listing.min_score]
        else:
            where.append("t.rank = 0")
        if listing.folder is not None:
            where.append("f.path >= ? AND f.path < ?")
            params += _folder_range(listing.folder)
        return where, params

    def _walk(self, listing: Listing) -> str:
        """The FROM clause in join order. Which index is walked decides the speed, never the rows.

        A narrow filter is fetched whole and sorted (a small folder by its path range, a rare
        tag by tags_by_class); otherwise the sort's own index is walked, filtering as it goes,
        until one page is full.
        """
        by_path = "files f INDEXED BY sqlite_autoindex_files_1 CROSS JOIN tags t INDEXED BY sqlite_autoindex_tags_1"
        if listing.folder is not None and self._fewer_than(
            "SELECT 1 FROM files WHERE path >= ? AND path < ?", _folder_range(listing.folder)
        ):
            return by_path
        if listing.groups:
            first = listing.groups[0]
            if listing.sort == "score" or self._fewer_than(
                f"SELECT 1 FROM tags WHERE class_id IN ({_marks(first)}) AND score >= ?", [*first, listing.min_score]
            ):
                return "tags t INDEXED BY tags_by_class CROSS JOIN files f"
        if listing.sort == "score":
            return "tags t INDEXED BY tags_top_by_score CROSS JOIN files f"
        if listing.sort == "name":
            return by_path
        return "files f INDEXED BY files_tagged_by_mtime CROSS JOIN tags t INDEXED BY sqlite_autoindex_tags_1"

    def _fewer_than(self, select: str, params: Sequence[object]) -> bool:
        """Whether `select` has fewer than FEW_ROWS rows; reads at most that many index entries."""
        row = self.conn.execute(f"SELECT COUNT(*) FROM ({select} LIMIT ?)", [*params, FEW_ROWS]).fetchone()
        return bool(row[0] < FEW_ROWS)

    def image_detail(self, path: str) -> ImageDetail | None:
        """Everything the index knows about one file, with all of its stored tags."""
        row = self.conn.execute(
            """SELECT f.path, f.sha256, f.size, f.mtime_ns, f.status, f.error, f.sidecar,
                      i.width, i.height, i.model, i.classified_at
               FROM files f LEFT JOIN images i ON i.sha256 = f.sha256 WHERE f.path = ?""",
            (path,),
        ).fetchone()
        if row is None:
            return None
        tags = self._tags(row[1]) if row[4] == "tagged" else []
        return ImageDetail(*row, tags=tags)

    def paths_with_content(self, sha256: str) -> list[str]:
        """Tagged files holding this content (a thumbnail can be made from any of them)."""
        rows = self.conn.execute(
            "SELECT path FROM files WHERE sha256 = ? AND status = 'tagged' ORDER BY path", (sha256,)
        ).fetchall()
        return [r[0] for r in rows]

    def tag_counts(self, min_score: float) -> list[TagCount]:
        """Tagged files per class at `min_score` or more, most common first (a full scan: cache it)."""
        rows = self.conn.execute(
            """SELECT t.class_id, t.wnid, t.label, t.label_zh, COUNT(*) AS n
               FROM files f JOIN tags t ON t.sha256 = f.sha256
               WHERE f.status = 'tagged' AND t.score >= ?
               GROUP BY t.class_id ORDER BY n DESC, t.label""",
            (min_score,),
        ).fetchall()
        return [TagCount(*r) for r in rows]


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def _folder_range(folder: str) -> list[str]:
    """[low, high) of the paths inside `folder`: a range scan on the path key."""
    prefix = folder.rstrip("/") + "/"
    return [prefix, prefix[:-1] + "0"]
