"""The SQLite index. Every SQL statement of tagger lives in this module.

One writer (the scanner or daemon) and any number of read-only readers (query, viewer).
WAL lets readers run while a scan writes. An image is keyed by its content hash, so a
copy or a re-scan costs a hash, not a model run.
"""
from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tagger.labels import Tag, imagenet_classes
from tagger.errors import DiskError, StoreBusy, StoreError
from tagger.sidecar import ImageFacts
from tagger.vectorindex import MIGRATION_EMBEDDINGS

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
    # 3: the viewer's folder filter: a folder's files are counted and sorted by time from
    # this index alone (status is in it so that no file row is read).
    """
    CREATE INDEX files_tagged_by_path ON files(path, mtime_ns, status) WHERE status = 'tagged';
    """,
    # 4: tagged files per class and score percent, kept by the database itself on every write,
    # so that the viewer's tag list costs a sum of at most 100,000 rows, not a join of every
    # file with its tags (6 to 60 seconds at a million files). INSERT OR REPLACE fires no
    # delete trigger (recursive_triggers is off), so a row about to be replaced is uncounted
    # just before. The backfill below takes about 10 s at a million files, once.
    """
    CREATE TABLE tag_counts (
        class_id INTEGER NOT NULL,
        percent  INTEGER NOT NULL,
        files    INTEGER NOT NULL,
        PRIMARY KEY (class_id, percent)
    ) WITHOUT ROWID;
    INSERT INTO tag_counts (class_id, percent, files)
        SELECT t.class_id, CAST(t.score * 100 AS INTEGER), COUNT(*)
        FROM files f CROSS JOIN tags t WHERE t.sha256 = f.sha256 AND f.status = 'tagged' GROUP BY 1, 2;
    CREATE TRIGGER tag_counts_file_replaced BEFORE INSERT ON files BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT t.class_id, CAST(t.score * 100 AS INTEGER), -1 FROM files f CROSS JOIN tags t
            WHERE f.path = NEW.path AND f.status = 'tagged' AND t.sha256 = f.sha256
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_file_added AFTER INSERT ON files WHEN NEW.status = 'tagged' BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT class_id, CAST(score * 100 AS INTEGER), 1 FROM tags WHERE sha256 = NEW.sha256
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_file_removed AFTER DELETE ON files WHEN OLD.status = 'tagged' BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT class_id, CAST(score * 100 AS INTEGER), -1 FROM tags WHERE sha256 = OLD.sha256
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_file_changed AFTER UPDATE OF sha256, status ON files BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT class_id, CAST(score * 100 AS INTEGER), -1 FROM tags
            WHERE sha256 = OLD.sha256 AND OLD.status = 'tagged'
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT class_id, CAST(score * 100 AS INTEGER), 1 FROM tags
            WHERE sha256 = NEW.sha256 AND NEW.status = 'tagged'
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_tag_added AFTER INSERT ON tags BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT NEW.class_id, CAST(NEW.score * 100 AS INTEGER), COUNT(*) FROM files
            WHERE sha256 = NEW.sha256 AND status = 'tagged'
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_tag_removed AFTER DELETE ON tags BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT OLD.class_id, CAST(OLD.score * 100 AS INTEGER), -COUNT(*) FROM files
            WHERE sha256 = OLD.sha256 AND status = 'tagged'
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    """,
    # 5: keywords (the rules applied to the raw tags, then the user's corrections), searched
    # best first through keyword_terms: a row per search word (the keyword and each of its
    # categories, English and Chinese, casefolded) and score of a keyword it finds, walked
    # from the top of (term, score).
    # Corrections are keyed by content, so they survive moves, re-tags and a change of model.
    """
    ALTER TABLE files ADD COLUMN added_at TEXT;
    UPDATE files SET added_at = updated_at;
    CREATE TABLE keywords (
        sha256     TEXT NOT NULL,
        keyword    TEXT NOT NULL,
        keyword_zh TEXT NOT NULL,
        path       TEXT NOT NULL,
        path_zh    TEXT NOT NULL,
        score      REAL NOT NULL,
        source     TEXT NOT NULL CHECK (source IN ('model', 'user')),
        PRIMARY KEY (sha256, keyword)
    ) WITHOUT ROWID;
    CREATE TABLE keyword_terms (
        term   TEXT NOT NULL,
        score  REAL NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (term, score, sha256)
    ) WITHOUT ROWID;
    CREATE INDEX keyword_terms_by_sha256 ON keyword_terms(sha256, term);
    CREATE TABLE corrections (
        sha256     TEXT NOT NULL,
        keyword    TEXT NOT NULL,
        action     TEXT NOT NULL CHECK (action IN ('add', 'remove')),
        created_at TEXT NOT NULL,
        PRIMARY KEY (sha256, keyword)
    ) WITHOUT ROWID;
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 6: contents whose sidecars a retag still has to rewrite: marked in the transaction that
    # changes their keywords, cleared as the files are written, so that a retag stopped in
    # between (a crash, Ctrl-C) is caught up by the next one.
    """
    CREATE TABLE sidecars_pending (sha256 TEXT PRIMARY KEY) WITHOUT ROWID;
    """,
    # 7: embeddings per content (the model's pooled features) and learned tags (tagger.vectorindex).
    MIGRATION_EMBEDDINGS,
)


@dataclass(frozen=True)
class KeywordRow:
    """A keyword of one content, as stored and written into sidecars."""

    keyword: str
    keyword_zh: str
    path: str  # with its categories: animal/cat
    path_zh: str
    score: float
    source: str  # model or user

    def terms(self) -> set[str]:
        return keyword_terms(self.path, self.path_zh)

    def as_dict(self) -> dict[str, object]:
        return {
            "keyword": self.keyword,
            "keyword_zh": self.keyword_zh,
            "path": self.path,
            "path_zh": self.path_zh,
            "score": round(self.score, 6),
            "source": self.source,
        }


def keyword_terms(path: str, path_zh: str) -> set[str]:
    """The search words that find a keyword: itself and each category, English and Chinese."""
    return {w.strip().casefold() for w in (*path.split("/"), *path_zh.split("/")) if w.strip()}


@dataclass(frozen=True)
class ClassKeyword:
    """What the rules make of one class: its keyword, and the least score at which it counts."""

    class_id: int
    threshold: float  # inf: dropped, never a keyword
    keyword: str
    keyword_zh: str
    path: str
    path_zh: str


@dataclass(frozen=True)
class Correction:
    keyword: str
    action: str  # add or remove


@dataclass(frozen=True)
class StoredContent:
    """One content's raw tags, keywords and corrections, for a re-tag."""

    sha256: str
    tags: list[Tag]
    keywords: list[KeywordRow]
    corrections: list[Correction]


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
    images_without_files: int  # contents kept for reuse after their files went
    models: dict[str, int]
    top_labels: list[tuple[str, str, int]]


# The viewer's orders: key column and direction; ties are broken by path in the same direction.
SORTS: dict[str, tuple[str, str]] = {
    "newest": ("f.mtime_ns", "DESC"),
    "oldest": ("f.mtime_ns", "ASC"),
    "score": ("t.score", "DESC"),
    "name": ("f.path", "ASC"),
}
# A filter matching fewer rows than this (a rare tag, a small folder) is fetched whole and
# sorted; a wider one walks the sort's own index until a page is full. Around this size
# both take some tens of milliseconds at a million files; away from it, a few.
FEW_ROWS = 3_000
# A folder with fewer files than this is shown by time by sorting its (path, mtime) keys in
# a covering index, rather than by walking all the newer files of the library.
FOLDER_KEYS_FIRST = 200_000

SortKey = tuple[float | int | str, str]  # (the sort column's value, path) of a file in a listing


@dataclass(frozen=True)
class Listing:
    """Which files the viewer lists and in which order."""

    groups: tuple[tuple[int, ...], ...] = ()  # every group must match (a tag term -> its classes)
    min_score: float = 0.0  # for the tag a card shows: the first group's match, else the top tag
    folder: str | None = None  # only files under this folder
    sort: str = "newest"


@dataclass(frozen=True)
class Search:
    """A parsed query (tagger.querylang) with its words resolved to stored search terms."""

    groups: tuple[tuple[str, ...], ...] = ()  # every group must match (a word -> its terms)
    not_groups: tuple[tuple[str, ...], ...] = ()  # none may match
    score_min: float = 0.0  # of the matching keywords (of any keyword, with no groups)
    score_max: float = 1.0
    folders: tuple[str, ...] = ()  # a folder's name anywhere in the path, or an absolute folder
    not_folders: tuple[str, ...] = ()
    added: tuple[str | None, str | None] = (None, None)  # [from, to) of files.added_at
    mtime_ns: tuple[int | None, int | None] = (None, None)  # [from, to) of files.mtime_ns


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
class ImageDetail(FileRecord):
    """A file's record with its image's facts and all of its stored tags."""

    width: int | None
    height: int | None
    classified_at: str | None
    tags: list[Tag]


@dataclass(frozen=True)
class TagCount:
    class_id: int
    wnid: str
    label: str
    label_zh: str
    count: int


# SQLite's result codes for "the disk is full" and "the disk failed a read or write" (and its extended codes).
SQLITE_FULL = 13
SQLITE_IOERR = 10


def disk_error(index: Path, exc: sqlite3.Error, consequence: str) -> DiskError | None:
    """A DiskError naming the disk holding the index and what was not written; None for other errors."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary not in (SQLITE_FULL, SQLITE_IOERR):
        return None
    folder = index.resolve().parent
    mount = folder
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        usage = os.statvfs(folder)
        free = usage.f_bavail * usage.f_frsize
    except OSError:
        free = -1
    left = f"{free / 1024 / 1024:,.1f} MB free" if free >= 0 else "free space unknown"
    if primary == SQLITE_FULL or 0 <= free < FULL_BELOW_BYTES:
        problem = f"the disk holding the index ({mount}, {left}) is full"
    else:
        problem = f"the disk holding the index ({mount}, {left}) failed a read or write ({exc})"
    return DiskError(f"{index}: {problem}: {consequence}; free some space (everything written before is kept)")


FULL_BELOW_BYTES = 1024 * 1024  # a "disk I/O error" with less than this free is a full disk


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
            conn.text_factory = _text
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            store = cls(conn, path, readonly)
            if readonly:
                store._check_version()
            else:
                store._migrate()
        except sqlite3.Error as exc:
            disk = disk_error(path, exc, "the index could not be opened or upgraded")
            if disk is not None:
                raise disk from None
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
    def transaction(self, what: str = "this change to the index") -> Iterator[sqlite3.Connection]:
        """All writes go through here: committed whole or not at all.

        A full or failing disk becomes one DiskError naming the disk and `what` was not written.
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreBusy(f"{self.path}: the index is busy: another tagger command is writing to it") from None
            self._raise_disk_error(exc, what)
            raise
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException as exc:
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite already rolled back (it does so itself on a full disk)
            if isinstance(exc, sqlite3.Error):
                self._raise_disk_error(exc, what)
            raise

    def _raise_disk_error(self, exc: sqlite3.Error, what: str) -> None:
        disk = disk_error(self.path, exc, f"{what} was not written")
        if disk is not None:
            raise disk from None

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
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, _now()))

    # -- reads ---------------------------------------------------------------------------

    def file_record(self, path: str) -> FileRecord | None:
        row = self.conn.execute(
            """SELECT f.path, f.sha256, f.size, f.mtime_ns, f.status, f.error, f.sidecar, i.model
               FROM files f LEFT JOIN images i ON i.sha256 = f.sha256 WHERE f.path = CAST(? AS TEXT)""",
            (fs(path),),
        ).fetchone()
        return FileRecord(*row) if row else None

    def image_facts(self, sha256: str) -> tuple[ImageFacts, str, str] | None:
        """(facts, model, weights sha256) of a classified content."""
        row = self.conn.execute(
            "SELECT size, width, height, model, weights_sha256 FROM images WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return None if row is None else (ImageFacts(sha256, *row[:3]), row[3], row[4])

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

    def setting(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

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
            ("class_id, wnid, label, label_zh, score FROM tags", "rank", tags, Tag),
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

    def mark_sidecars_pending(self, shas: Sequence[str]) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO sidecars_pending (sha256) VALUES (?)", [(s,) for s in shas])

    def sidecars_pending(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT sha256 FROM sidecars_pending")]

    def clear_sidecars_pending(self, shas: Sequence[str]) -> None:
        self.conn.executemany("DELETE FROM sidecars_pending WHERE sha256 = ?", [(s,) for s in shas])

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

    def paths_under(self, root: str) -> list[str]:
        """Indexed paths inside folder `root` (a range scan on the primary key)."""
        prefix = root.rstrip("/") + "/"
        rows = self.conn.execute(
            "SELECT path FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)",
            (fs(prefix), fs(prefix[:-1] + "0")),
        ).fetchall()
        return [r[0] for r in rows]

    def query(self, class_groups: Sequence[Sequence[int]], min_score: float, limit: int | None) -> list[TaggedFile]:
        """Files having, for every group, at least one of its classes at `min_score` or more.

        Best first: ordered by the score of the first group's match. With a limit, each class's
        (class_id, score) index is walked from the top, so a common tag costs what a page
        costs, not a sort of every match.
        """
        if not class_groups:
            rows = self.conn.execute(
                """SELECT f.path, f.sha256, i.model FROM files f JOIN images i ON i.sha256 = f.sha256
                   WHERE f.status = 'tagged' ORDER BY f.path LIMIT ?""",
                (-1 if limit is None else limit,),
            ).fetchall()
            return self._with_tags(rows, min_score)
        if limit is not None:
            found = self._query_top(class_groups, min_score, limit)
            if found is not None:
                return found
        first, *rest = class_groups
        sql = [
            f"""WITH m AS (SELECT sha256, MAX(score) AS best FROM tags
                           WHERE class_id IN ({_marks(first)}) AND score >= ? GROUP BY sha256)
                SELECT f.path, f.sha256, i.model FROM m
                JOIN files f ON f.sha256 = m.sha256 AND f.status = 'tagged' JOIN images i ON i.sha256 = m.sha256
                WHERE 1"""
        ]
        params: list[object] = [*first, min_score]
        for group in rest:
            sql.append(
                f"""AND EXISTS (SELECT 1 FROM tags t WHERE t.sha256 = m.sha256
                    AND t.class_id IN ({_marks(group)}) AND t.score >= ?)"""
            )
            params += [*group, min_score]
        sql.append("ORDER BY m.best DESC, f.path LIMIT ?")
        params.append(-1 if limit is None else limit)
        return self._with_tags(self.conn.execute("\n".join(sql), params).fetchall(), min_score)

    def _query_top(
        self, class_groups: Sequence[Sequence[int]], min_score: float, limit: int
    ) -> list[TaggedFile] | None:
        """The first `limit` matches from the top of each class's index; None if that was not enough."""
        first, *rest = class_groups
        reach = limit * 4 + 100  # contents per class: room for copies, other groups and filters
        best: dict[str, float] = {}
        exhausted = True
        for class_id in first:
            rows = self.conn.execute(
                "SELECT sha256, score FROM tags WHERE class_id = ? AND score >= ? ORDER BY score DESC LIMIT ?",
                (class_id, min_score, reach),
            ).fetchall()
            exhausted = exhausted and len(rows) < reach
            for sha, score in rows:
                if score > best.get(sha, -1.0):
                    best[sha] = score
        found: list[tuple[str, str, str]] = []
        for sha, _ in sorted(best.items(), key=lambda item: -item[1]):
            if any(not self._has_any(sha, group, min_score) for group in rest):
                continue
            found += self.conn.execute(
                """SELECT f.path, f.sha256, i.model FROM files f JOIN images i ON i.sha256 = f.sha256
                   WHERE f.sha256 = ? AND f.status = 'tagged' ORDER BY f.path""",
                (sha,),
            ).fetchall()
            if len(found) >= limit:
                return self._with_tags(found[:limit], min_score)
        return self._with_tags(found, min_score) if exhausted else None

    def search(self, search: Search, limit: int | None, min_score: float) -> list[TaggedFile]:
        """Files matching `search`, best first by the first group's keyword score, else by path."""
        return self._with_tags([(path, sha, model) for path, sha, model, _ in self._search(search, limit)], min_score)

    def search_items(self, search: Search, limit: int, after: SortKey | None = None) -> list[GridItem]:
        """The viewer's cards for a search, each shown with its top tag; `after`: the key of the last one shown."""
        found = self._search(search, limit, after)
        cards = {
            row[0]: row
            for row in self.conn.execute(
                f"""SELECT f.path, f.sha256, f.size, f.mtime_ns, i.width, i.height,
                           t.class_id, t.wnid, t.label, t.label_zh, t.score
                    FROM files f JOIN images i ON i.sha256 = f.sha256 JOIN tags t ON t.sha256 = f.sha256
                    WHERE f.path IN ({", ".join(["CAST(? AS TEXT)"] * len(found))}) AND t.rank = 0""",
                [fs(r[0]) for r in found],
            )
        }
        return [
            GridItem(path, sha, size, mtime, width, height, Tag(*tag), (score, path))
            for (path, sha, size, mtime, width, height, *tag), score in (
                (cards[r[0]], r[3]) for r in found if r[0] in cards
            )
        ]

    def _search(
        self, search: Search, limit: int | None, after: SortKey | None = None
    ) -> list[tuple[str, str, str, float]]:
        """(path, sha256, model, score) of the matches, in (score desc, sha256, path) order; 0.0 and path
        order without tag words. `after` (score, path): the matches that follow that one.

        With a limit, each term's (term, score) key in keyword_terms is walked from the top (or
        from the cursor's score), deeper only while filters leave the page short: a common tag
        costs a page, not a sort of every match.
        """
        terms, params = _search_filter(search)
        where = " AND ".join(["f.status = 'tagged'", *terms])
        if not search.groups:
            if after is not None:
                where += " AND f.path > CAST(? AS TEXT)"
                params.append(fs(after[1]))
            rows = self.conn.execute(
                f"""SELECT f.path, f.sha256, i.model, 0.0 FROM files f JOIN images i ON i.sha256 = f.sha256
                    WHERE {where} ORDER BY f.path LIMIT ?""",
                [*params, -1 if limit is None else limit],
            ).fetchall()
            return rows
        group = search.groups[0]
        top, after_sha = search.score_max, ""
        if after is not None:
            top = min(top, float(after[0]))
            row = self.conn.execute("SELECT sha256 FROM files WHERE path = CAST(? AS TEXT)", (fs(after[1]),)).fetchone()
            after_sha = row[0] if row and row[0] else ""
        reach = -1 if limit is None else limit * 4 + 100
        while True:
            best: dict[str, float] = {}
            exhausted = True
            for term in group:
                rows = self.conn.execute(
                    """SELECT sha256, score FROM keyword_terms WHERE term = ? AND score BETWEEN ? AND ?
                       ORDER BY score DESC LIMIT ?""",
                    (term, search.score_min, top, reach),
                ).fetchall()
                exhausted = exhausted and (reach < 0 or len(rows) < reach)
                for sha, score in rows:
                    best[sha] = max(score, best.get(sha, -1.0))
            found: list[tuple[str, str, str, float]] = []
            for sha, score in sorted(best.items(), key=lambda item: (-item[1], item[0])):
                if after is not None and self._shown_before(sha, score, top, after_sha, group, search):
                    continue
                same = after is not None and sha == after_sha and score == top
                found += [
                    (*row, score)
                    for row in self.conn.execute(
                        f"""SELECT f.path, f.sha256, i.model FROM files f JOIN images i ON i.sha256 = f.sha256
                            WHERE f.sha256 = ? AND {where} {"AND f.path > CAST(? AS TEXT)" if same else ""} ORDER BY f.path""",
                        [sha, *params, *([fs(after[1])] if same and after else [])],
                    )
                ]
                if limit is not None and len(found) >= limit:
                    return found[:limit]
            if exhausted:
                return found
            reach *= 8

    def _shown_before(
        self, sha: str, score: float, top: float, after_sha: str, group: Sequence[str], search: Search
    ) -> bool:
        """Whether a content came before the cursor (score `top`, content `after_sha`): at the cursor's
        score with a smaller hash, or with a better match than the walk from the cursor saw."""
        if score == top and sha < after_sha:
            return True
        row = self.conn.execute(
            f"""SELECT MAX(score) FROM keyword_terms
                WHERE sha256 = ? AND term IN ({_marks(group)}) AND score BETWEEN ? AND ?""",
            (sha, *group, search.score_min, search.score_max),
        ).fetchone()
        return row[0] is not None and row[0] > score

    def has_term(self, term: str) -> bool:
        """Some keyword (a user's own, or a category) is found by this search word."""
        row = self.conn.execute("SELECT 1 FROM keyword_terms WHERE term = ? LIMIT 1", (term,)).fetchone()
        return row is not None

    def _has_any(self, sha256: str, class_ids: Sequence[int], min_score: float) -> bool:
        row = self.conn.execute(
            f"SELECT 1 FROM tags WHERE sha256 = ? AND class_id IN ({_marks(class_ids)}) AND score >= ? LIMIT 1",
            (sha256, *class_ids, min_score),
        ).fetchone()
        return row is not None

    def _with_tags(self, rows: Sequence[tuple[str, str, str]], min_score: float) -> list[TaggedFile]:
        """Attach each file's tags, fetched for all the rows' contents at once (not one query per row)."""
        shas = list(dict.fromkeys(sha for _, sha, _ in rows))
        tags: dict[str, list[Tag]] = {sha: [] for sha in shas}
        for start in range(0, len(shas), 500):
            chunk = shas[start : start + 500]
            for sha, *fields in self.conn.execute(
                f"""SELECT sha256, class_id, wnid, label, label_zh, score FROM tags
                    WHERE sha256 IN ({_marks(chunk)}) AND score >= ? ORDER BY sha256, rank""",
                (*chunk, min_score),
            ):
                tags[sha].append(Tag(*fields))
        return [TaggedFile(path, sha, model, tags[sha]) for path, sha, model in rows]

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
            """INSERT OR REPLACE INTO files (path, sha256, size, mtime_ns, status, error, sidecar, updated_at, added_at)
               VALUES (CAST(? AS TEXT), ?, ?, ?, 'tagged', ?, CAST(? AS TEXT), ?,
                       COALESCE((SELECT added_at FROM files WHERE path = CAST(? AS TEXT)), ?))""",
            (fs(path), sha256, size, mtime_ns, note, None if sidecar is None else fs(sidecar), _now(), fs(path), _now()),
        )

    def save_failure(self, path: str, sha256: str | None, size: int, mtime_ns: int, error: str) -> None:
        self.conn.execute(
            """INSERT OR REPLACE INTO files (path, sha256, size, mtime_ns, status, error, sidecar, updated_at, added_at)
               VALUES (CAST(? AS TEXT), ?, ?, ?, 'failed', ?, NULL, ?,
                       COALESCE((SELECT added_at FROM files WHERE path = CAST(? AS TEXT)), ?))""",
            (fs(path), sha256, size, mtime_ns, error, _now(), fs(path), _now()),
        )

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
            "UPDATE files SET path = CAST(? AS TEXT), updated_at = ? WHERE path = CAST(? AS TEXT)", (fs(dst), _now(), fs(src))
        )
        return cursor.rowcount > 0

    def move_tree(self, src: str, dst: str) -> int:
        """Every row under folder `src` moves under `dst` (a renamed or moved folder)."""
        old, new = src.rstrip("/") + "/", dst.rstrip("/") + "/"
        self.conn.execute(
            "DELETE FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)", (fs(new), fs(new[:-1] + "0"))
        )
        cursor = self.conn.execute(  # substr of the bytes: a name that is not UTF-8 has no characters to count
            """UPDATE files SET path = CAST(CAST(? AS BLOB) || substr(CAST(path AS BLOB), ?) AS TEXT), updated_at = ?
               WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)""",
            (os.fsencode(new), len(os.fsencode(old)) + 1, _now(), fs(old), fs(old[:-1] + "0")),
        )
        return cursor.rowcount

    def set_sidecar(self, path: str, sidecar: str | None) -> None:
        self.conn.execute(
            "UPDATE files SET sidecar = CAST(? AS TEXT) WHERE path = CAST(? AS TEXT)",
            (None if sidecar is None else fs(sidecar), fs(path)),
        )

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

    def save_correction(self, sha256: str, keyword: str, action: str) -> None:
        """The latest word of the user about a keyword of this content wins."""
        self.conn.execute(
            "INSERT OR REPLACE INTO corrections (sha256, keyword, action, created_at) VALUES (?, ?, ?, ?)",
            (sha256, keyword, action, _now()),
        )

    def set_setting(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

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
        the first page, and nothing is skipped or repeated when files arrive meanwhile.
        `backwards` walks towards the start (the previous image); `only` keeps one path (to
        learn its key).
        """
        column, direction = SORTS[listing.sort]
        if backwards:
            direction = "ASC" if direction == "DESC" else "DESC"
        op = "<" if direction == "DESC" else ">"
        plan = self._plan(listing)
        file_terms, file_params = _file_filter(listing, only)
        if after is not None and column == "f.path":
            file_terms.append(f"f.path {op} CAST(? AS TEXT)")
            file_params.append(fs(after[1]))
        elif after is not None:
            file_terms.append(f"{column} {op}= ? AND ({column} {op} ? OR f.path {op} CAST(? AS TEXT))")
            file_params += [after[0], after[0], fs(after[1])]
        # How deep into the bound or the folder's keys to reach: a page's worth, more when other
        # terms will drop some; reached deeper until a page is full or there is no more.
        depth = limit if not listing.groups and listing.min_score == 0 else 4 * limit
        while True:
            bound = None  # how far down the scores this page can reach: found first, from the index alone
            if plan.merge_classes:
                bound = self._score_bound(plan.merge_classes, listing.min_score, after, direction, depth)
            tag_terms, tag_params = _tag_filter(listing, bound, direction)
            source, terms, params = plan.source, file_terms + tag_terms, file_params + tag_params
            if plan.folder_size:  # the folder's first `depth` keys, sorted in a covering index, then joined
                source = f"""(SELECT f.path AS key_path FROM files f INDEXED BY files_tagged_by_path
                              WHERE {" AND ".join(file_terms)} ORDER BY {column} {direction}, f.path {direction}
                              LIMIT ?) CROSS JOIN {source}"""
                terms, params = ["f.path = key_path", *tag_terms], [*file_params, depth, *tag_params]
            rows = self.conn.execute(
                f"""SELECT f.path, f.sha256, f.size, f.mtime_ns, i.width, i.height,
                           t.class_id, t.wnid, t.label, t.label_zh, t.score, {column}
                    FROM {source} CROSS JOIN images i WHERE {" AND ".join(["i.sha256 = f.sha256", *terms])}
                    ORDER BY {column} {direction}, f.path {direction} LIMIT ?""",
                [*params, limit],
            ).fetchall()
            reached_end = bound is None and depth >= plan.folder_size
            if len(rows) == limit or reached_end:
                break
            depth *= 8 if plan.folder_size else 2
        return [
            GridItem(path, sha, size, mtime, width, height, Tag(*tag), (key, path))
            for path, sha, size, mtime, width, height, *tag, key in rows
        ]

    def _plan(self, listing: Listing) -> _Plan:
        """Which index a page walks. It decides the speed, never the rows.

        A narrow filter (a rare tag, a small folder) is fetched whole and sorted; otherwise
        the sort's own index is walked, filtering as it goes, until the page is full.
        """
        by_path = "files f INDEXED BY sqlite_autoindex_files_1 CROSS JOIN tags t INDEXED BY sqlite_autoindex_tags_1"
        by_mtime = "files f INDEXED BY files_tagged_by_mtime CROSS JOIN tags t INDEXED BY sqlite_autoindex_tags_1"
        by_class = "tags t INDEXED BY tags_by_class CROSS JOIN files f"
        first = listing.groups[0] if listing.groups else ()
        in_folder = FOLDER_KEYS_FIRST
        if listing.folder is not None:
            in_folder = self._count_upto(
                """SELECT 1 FROM files INDEXED BY files_tagged_by_path
                   WHERE status = 'tagged' AND path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)""",
                _folder_range(listing.folder),
                FOLDER_KEYS_FIRST,
            )
            if in_folder < FEW_ROWS:
                return _Plan(by_path)
        if listing.sort == "score" and first:
            return _Plan(by_class, merge_classes=first if len(first) > 1 else ())
        if listing.sort == "score":
            return _Plan("tags t INDEXED BY tags_top_by_score CROSS JOIN files f")
        matches = f"SELECT 1 FROM tags WHERE class_id IN ({_marks(first)}) AND score >= ?"
        if first and self._count_upto(matches, [*first, listing.min_score], FEW_ROWS) < FEW_ROWS:
            return _Plan(by_class)
        if in_folder < FOLDER_KEYS_FIRST and listing.sort != "name":
            return _Plan(by_path, folder_size=in_folder)
        return _Plan(by_path if listing.sort == "name" else by_mtime)

    def _score_bound(
        self, classes: Sequence[int], min_score: float, after: SortKey | None, direction: str, depth: int
    ) -> float | None:
        """The `depth`-th best score among these classes' tags past the cursor; None if there are fewer.

        Each class's tags are in score order in tags_by_class, so this reads `depth` index
        entries per class, where all the tags of a common group can number a hundred thousand.
        """
        op = "<" if direction == "DESC" else ">"
        start = after[0] if after is not None else (2.0 if direction == "DESC" else -1.0)
        scores: list[float] = []
        for class_id in classes:
            rows = self.conn.execute(
                f"""SELECT score FROM tags INDEXED BY tags_by_class WHERE class_id = ? AND score >= ?
                    AND score {op}= ? ORDER BY score {direction} LIMIT ?""",
                (class_id, min_score, start, depth),
            ).fetchall()
            scores += [r[0] for r in rows]
        if len(scores) < depth:
            return None
        scores.sort(reverse=direction == "DESC")
        return scores[depth - 1]

    def grow_cache(self, size: int) -> None:
        """A page cache of `size` bytes for this connection: a bulk rewrite (retag) of a large
        index stops re-reading the same index pages from disk."""
        self.conn.execute(f"PRAGMA cache_size = {-(int(size) // 1024)}")

    def map_memory(self, size: int) -> None:
        """Read the index through memory-mapped pages: random lookups in a large index are about
        twice as fast as through read() calls. For long-lived read-only connections."""
        self.conn.execute(f"PRAGMA mmap_size = {int(size)}")

    def _count_upto(self, select: str, params: Sequence[object], cap: int) -> int:
        """Rows of `select`, counting no further than `cap` (reading at most that many index entries)."""
        return int(self.conn.execute(f"SELECT COUNT(*) FROM ({select} LIMIT ?)", [*params, cap]).fetchone()[0])

    def image_detail(self, path: str) -> ImageDetail | None:
        """Everything the index knows about one file, with all of its stored tags."""
        row = self.conn.execute(
            """SELECT f.path, f.sha256, f.size, f.mtime_ns, f.status, f.error, f.sidecar, i.model,
                      i.width, i.height, i.classified_at
               FROM files f LEFT JOIN images i ON i.sha256 = f.sha256 WHERE f.path = CAST(? AS TEXT)""",
            (fs(path),),
        ).fetchone()
        if row is None:
            return None
        path, sha256, size, mtime_ns, status, error, sidecar, model, width, height, classified_at = row
        tags = self._tags(sha256) if status == "tagged" else []
        return ImageDetail(
            path, sha256, size, mtime_ns, status, error, sidecar, model, width, height, classified_at, tags
        )

    def paths_with_content(self, sha256: str) -> list[str]:
        """Tagged files holding this content (a thumbnail can be made from any of them)."""
        rows = self.conn.execute(
            "SELECT path FROM files WHERE sha256 = ? AND status = 'tagged' ORDER BY path", (sha256,)
        ).fetchall()
        return [r[0] for r in rows]

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

    def content_count(self) -> int:
        """Distinct contents classified (images rows)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def tagged_count(self) -> int:
        """Files tagged, read from the smallest index that holds exactly them."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM files INDEXED BY files_tagged_by_mtime WHERE status = 'tagged'"
        ).fetchone()
        return int(row[0])


@dataclass(frozen=True)
class _Plan:
    source: str  # the FROM clause: tables in join order, each with the index it is read by
    folder_size: int = 0  # set: sort the folder's keys in a covering index first, then join a page
    merge_classes: tuple[int, ...] = ()  # best first across these classes: bound the scores first


def _file_filter(listing: Listing, only: str | None) -> tuple[list[str], list[object]]:
    terms, params = ["f.status = 'tagged'"], list[object]()
    if listing.folder is not None:
        terms.append("f.path >= CAST(? AS TEXT) AND f.path < CAST(? AS TEXT)")
        params += _folder_range(listing.folder)
    if only is not None:
        terms.append("f.path = CAST(? AS TEXT)")
        params.append(fs(only))
    return terms, params


def _tag_filter(
    listing: Listing, bound: float | None = None, direction: str = "DESC"
) -> tuple[list[str], list[object]]:
    """`t` is the tag a file's card shows: its best match for the first group, or its top tag.

    `bound` is the lowest score a best-first page reaches (the highest, walking `ASC`); it
    joins min_score in one range on the index.
    """
    terms = ["t.sha256 = f.sha256", "t.score >= ?"]
    params: list[object] = [listing.min_score]
    if bound is not None and direction == "DESC":
        params = [max(listing.min_score, bound)]
    elif bound is not None:
        terms.append("t.score <= ?")
        params.append(bound)
    if not listing.groups:
        return [*terms, "t.rank = 0"], params
    first, *rest = listing.groups
    terms.append(f"t.class_id IN ({_marks(first)})")
    params += first
    if len(first) > 1:  # several classes of the group may match one image: keep its best (lowest rank)
        terms.append(
            f"""NOT EXISTS (SELECT 1 FROM tags b INDEXED BY sqlite_autoindex_tags_1
                WHERE b.sha256 = t.sha256 AND b.rank < t.rank AND b.class_id IN ({_marks(first)}))"""
        )
        params += first
    for group in rest:
        terms.append(
            f"""EXISTS (SELECT 1 FROM tags x INDEXED BY sqlite_autoindex_tags_1
                WHERE x.sha256 = f.sha256 AND x.class_id IN ({_marks(group)}) AND x.score >= ?)"""
        )
        params += [*group, listing.min_score]
    return terms, params


def _search_filter(search: Search) -> tuple[list[str], list[object]]:
    """WHERE terms on `files f` for everything in a search but the first group's own match."""
    terms: list[str] = []
    params: list[object] = []
    matches = "SELECT 1 FROM keyword_terms k WHERE k.sha256 = f.sha256 AND k.term IN ({})"
    for group in search.groups[1:]:
        terms.append(f"EXISTS ({matches.format(_marks(group))} AND k.score BETWEEN ? AND ?)")
        params += [*group, search.score_min, search.score_max]
    for group in search.not_groups:
        terms.append(f"NOT EXISTS ({matches.format(_marks(group))})")
        params += group
    if not search.groups and (search.score_min > 0.0 or search.score_max < 1.0):
        terms.append("EXISTS (SELECT 1 FROM keywords k WHERE k.sha256 = f.sha256 AND k.score BETWEEN ? AND ?)")
        params += [search.score_min, search.score_max]
    for folders, negate in ((search.folders, ""), (search.not_folders, "NOT ")):
        for folder in folders:
            if folder.startswith("/"):
                terms.append(f"{negate}(f.path >= CAST(? AS TEXT) AND f.path < CAST(? AS TEXT))")
                params += _folder_range(folder)
            else:
                terms.append(f"{negate}(instr(f.path, CAST(? AS TEXT)) > 0)")
                params.append(fs("/" + folder.strip("/") + "/"))
    for column, (low, high) in (("f.added_at", search.added), ("f.mtime_ns", search.mtime_ns)):
        if low is not None:
            terms.append(f"{column} >= ?")
            params.append(low)
        if high is not None:
            terms.append(f"{column} < ?")
            params.append(high)
    return terms, params


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration, each whole: a trigger's body keeps its own semicolons."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def _folder_range(folder: str) -> list[str | bytes]:
    """[low, high) of the paths inside `folder`: a range on the path key (bind each through CAST(? AS TEXT))."""
    prefix = folder.rstrip("/") + "/"
    return [fs(prefix), fs(prefix[:-1] + "0")]


def fs(path: str) -> str | bytes:
    """A path as bound to SQL, through CAST(? AS TEXT): the str itself, or, for a name that is
    not UTF-8 (surrogate-escaped), its bytes, stored as they are. Read back through the
    connections' text factory, it is the same str again."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _text(data: bytes) -> str:
    """TEXT columns as str; the bytes of a name that is not UTF-8 as surrogate escapes, as os.fsdecode does."""
    return data.decode("utf-8", "surrogateescape")
