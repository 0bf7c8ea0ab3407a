"""The index's database core: connections, transactions and migrations; no domain here.

One writer (the scanner, the daemon, the viewer's one write connection) and any number of
read-only readers (query, viewer). WAL lets readers run while a scan writes. Every write
goes through `transaction()`.
"""
from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from tagger.errors import DiskError, StoreBusy, StoreError
from tagger.fileio import file_kind, utc_text
from tagger.index.identity import check as check_identity
from tagger.index.identity import is_damage, note_damage, refuse_if_damaged, settle
from tagger.index.identity import touch as touch_identity
from tagger.index.schema import LATEST, MIGRATIONS

# SQLite's result codes for "the disk is full" and "the disk failed a read or write" (and its extended codes).
SQLITE_FULL = 13
SQLITE_IOERR = 10
FULL_BELOW_BYTES = 1024 * 1024  # a "disk I/O error" with less than this free is a full disk


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


def store_failure(index: Path, exc: sqlite3.Error, consequence: str = "nothing more was written") -> StoreError:
    """The one-line error for any SQLite error met in the index: a full or failing disk, damage
    (noted beside the index, so that every reader says it too), or the error itself."""
    disk = disk_error(index, exc, consequence)
    if disk is not None:
        return disk
    if is_damage(exc):
        return note_damage(index, exc)
    return StoreError(f"{index}: {exc}")


class Database:
    """One connection to the index; the generic core that the index's parts build on."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self.identified = False  # its id is settled: each write transaction touches it (tagger.index.identity)

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Self:
        """The writer creates and migrates; readers open `mode=ro` and never block the writer.

        Both first refuse an index noted as damaged, a WAL file of another index and an index that
        is not the one its companion file names (tagger.index.identity): nothing is written then."""
        try:
            info = path.stat()
        except OSError:
            pass  # none yet (or unreadable): the writer creates it, SQLite says what else is wrong
        else:
            if not stat.S_ISREG(info.st_mode):  # SQLite would wait forever reading a FIFO's header
                raise StoreError(f"{path}: the index is not a regular file but {file_kind(info.st_mode)}")
        conn: sqlite3.Connection | None = None
        try:
            refuse_if_damaged(path)
            wanted = check_identity(path, _read_only_uri(path)) if path.exists() else None
            if readonly:
                if not path.exists():
                    raise StoreError(f"{path}: no index yet (run `tagger scan` first)")
                conn = sqlite3.connect(_read_only_uri(path), uri=True, check_same_thread=False)
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
                version = store._check_version()
                if version == 0:  # an empty file, or another program's database
                    conn.close()
                    raise StoreError(f"{path}: no index yet (an empty file, or not a tagger index): run `tagger scan`")
                if version < LATEST:  # made by an older tagger: upgraded once, then only read
                    conn.close()
                    cls.open(path).close()
                    return cls.open(path, readonly=True)
            else:
                store._migrate()
                store.identified = settle(conn, path, wanted) is not None
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            failure = store_failure(path, exc, "the index could not be opened or upgraded")
            if type(failure) is StoreError:
                failure = StoreError(f"{path}: cannot open index: {exc}")
            raise failure from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot create index: {exc.strerror or exc}") from None
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
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
                raise StoreBusy(
                    f"{self.path}: the index is busy: another program holds its write lock (a tagger command such as "
                    "`tagger retag`, or a tool like sqlite3 with a transaction open)"
                ) from None
            self._raise_disk_error(exc, what)
            raise
        try:
            yield self.conn
            if self.identified:
                touch_identity(self.conn)
            self.conn.execute("COMMIT")
        except BaseException as exc:
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite already rolled back (it does so itself on a full disk)
            if isinstance(exc, sqlite3.Error):
                self._raise_disk_error(exc, what)
                if is_damage(exc):
                    raise note_damage(self.path, exc) from None
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

    def _check_version(self) -> int:
        version = self.schema_version()
        if version > LATEST:
            raise StoreError(f"{self.path}: index schema {version} is newer than this tagger ({LATEST})")
        return version

    def _migrate(self) -> None:
        """Each migration commits together with its version row, so a crash never leaves half a schema."""
        with self.transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
        self._check_version()
        for migration in MIGRATIONS:
            if migration.number <= self.schema_version():
                continue
            with self.transaction(f"migration {migration.number} ({migration.name})") as conn:
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (migration.number, utc_text())
                )

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


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration, each whole: a trigger's body keeps its own semicolons."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def folder_range(folder: str) -> list[str | bytes]:
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


def _read_only_uri(path: Path) -> str:
    """`mode=ro`; and `immutable=1` where this reader cannot write beside the index and no writer is at
    work (no -wal file: the daemon closed it cleanly). A reader of a WAL index must otherwise create
    its -shm file, and in a read-only folder (tagger-web.service's ReadOnlyPaths=) it could not open
    the index at all while the daemon was stopped."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    folder_read_only = not os.access(path.parent, os.W_OK)
    if folder_read_only and not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists():
        uri += "&immutable=1"
    return uri
