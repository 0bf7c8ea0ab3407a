"""What makes an index itself: its id (in the database and in `<index>.id` beside it), whose WAL
file lies beside it, and a note of damage found in it.

SQLite replays any `-wal` file it finds beside a database whose frames are consistent among
themselves: it never asks whether they were written for this database. So every write
transaction rewrites the id's row (`touch`, a new stamp after the id), and a WAL holding frames
always holds that row as its writer left it. Before anything opens the index read-write, the id
read through the WAL (`mode=ro`) is compared with the one the companion file keeps, or, without
one, with the main file's own (`immutable=1` reads the main file and ignores the WAL); a WAL
that disagrees is refused before a checkpoint can copy it into the index.

A damage note (`<index>.damage`) records that some command met a malformed page: every later
command, the viewer's requests too, refuses the index with the same advice until `tagger index
check` finds it healthy or `tagger index rebuild` replaces it. A query that never reads a damaged
page would otherwise answer from the undamaged part without a word.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from pathlib import Path

from tagger.errors import DamagedIndex, StoreError
from tagger.fileio import utc_text, write_atomic

log = logging.getLogger(__name__)

ID_KEY = "index_id"
ID_LENGTH = 32  # hex digits of a uuid4; the row's value is the id, a dot and the last writer's stamp
WAL_HEADER_BYTES = 32  # a WAL no longer than its header holds no frame: nothing to replay
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
ADVICE = "run `tagger index check`, restore it from a backup, or rebuild it from the sidecars with `tagger index rebuild`"


def companion_path(index: Path) -> Path:
    return Path(f"{index}.id")


def wal_path(index: Path) -> Path:
    return Path(f"{index}-wal")


def damage_path(index: Path) -> Path:
    return Path(f"{index}.damage")


def new_id() -> str:
    return uuid.uuid4().hex


def is_damage(exc: sqlite3.Error) -> bool:
    """A malformed page or a file that is not a database (as opposed to a busy, full or missing one)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def damaged(index: Path, reason: object) -> DamagedIndex:
    return DamagedIndex(f"{index}: the index is damaged ({reason}): {ADVICE}")


def note_damage(index: Path, exc: sqlite3.Error | str) -> DamagedIndex:
    """The error for `exc` (or a check's finding), and a note beside the index so that every reader says it too (best effort:
    a reader in a read-only folder cannot leave one)."""
    try:
        info = index.stat()
        note = {"found": utc_text(), "reason": str(exc), "inode": info.st_ino, "device": info.st_dev}
        write_atomic(damage_path(index), (json.dumps(note) + "\n").encode())
    except OSError:
        pass
    return damaged(index, exc)


def damage_noted(index: Path) -> str | None:
    """The reason in the damage note of this very file (an index put back in its place by a restore or
    a rebuild is another file: the note does not apply to it), or None."""
    try:
        note = json.loads(damage_path(index).read_text(encoding="utf-8"))
        info = index.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or (note.get("inode"), note.get("device")) != (info.st_ino, info.st_dev):
        return None
    return f"{note.get('reason')}, found {note.get('found')}"


def refuse_if_damaged(index: Path) -> None:
    reason = damage_noted(index)
    if reason is not None:
        raise damaged(index, reason)


def clear_damage(index: Path) -> bool:
    """Forget the note (the index was checked healthy, or replaced); whether there was one."""
    try:
        damage_path(index).unlink()
    except FileNotFoundError:
        return False
    return True


def read_companion(index: Path) -> str | None:
    try:
        text = companion_path(index).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == ID_LENGTH and all(c in "0123456789abcdef" for c in text) else None


def write_companion(index: Path, index_id: str) -> None:
    write_atomic(companion_path(index), (index_id + "\n").encode("ascii"))


def stored_id(conn: sqlite3.Connection) -> str | None:
    """The id this connection sees (through the WAL, unless opened immutable); None in an index from
    before ids, or in an empty file."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'settings'").fetchone() is None:
        return None
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (ID_KEY,)).fetchone()
    return None if row is None else str(row[0])[:ID_LENGTH]


def touch(conn: sqlite3.Connection) -> None:
    """Rewrite the id's row with a new stamp, inside each write transaction: the WAL then always holds
    its writer's id (SQLite skips rewriting a row that does not change)."""
    conn.execute(
        "UPDATE settings SET value = substr(value, 1, ?) || '.' || lower(hex(randomblob(4))) WHERE key = ?",
        (ID_LENGTH, ID_KEY),
    )


def settle(conn: sqlite3.Connection, index: Path, wanted: str | None) -> str | None:
    """The writer's id, written once (an index from before ids takes the companion's, or a new one),
    and the companion file written where it is missing; None for a schema without settings (being
    built by older migrations). Call outside a transaction."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'settings'").fetchone() is None:
        return None
    current = stored_id(conn)
    if current is None:
        current = wanted or new_id()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (ID_KEY, current))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if read_companion(index) != current:
        try:
            write_companion(index, current)
        except OSError as exc:  # a safeguard, not the index: the next writer tries again
            log.warning("%s: cannot write the index's id: %s", companion_path(index), exc.strerror or exc)
    return current


def _read(uri: str) -> str | None:
    conn = sqlite3.connect(uri, uri=True)
    try:
        return stored_id(conn)
    finally:
        conn.close()


def check(index: Path, read_only_uri: str) -> str | None:
    """Refuse an index that is not itself, before anything opens it read-write; the companion's id.

    Cheap when all is well: nothing is read when the WAL holds no frame and there is no companion
    to compare with; one read of the id otherwise.
    """
    try:
        if index.stat().st_size == 0:
            return None  # an empty file: no index yet
        wal_frames = wal_path(index).stat().st_size > WAL_HEADER_BYTES
    except FileNotFoundError:
        wal_frames = False
    except OSError:
        return None  # SQLite says what is wrong when the index itself is opened
    if not index.exists():
        return None
    companion = read_companion(index)
    if companion is None and not wal_frames:
        return None
    main_only = f"{index.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        current = _read(read_only_uri)
    except sqlite3.Error as exc:
        if wal_frames and is_damage(exc) and _readable(main_only):
            raise _foreign_wal(index, f"the index cannot be read with it: {exc}") from None
        return companion  # opening it says what is wrong
    if current is None or current == companion:
        return companion
    if not wal_frames:
        raise _not_this_index(index, current, companion)
    try:
        main = _read(main_only)
    except sqlite3.Error:
        main = None
    if companion is None:
        if main is not None and main != current:
            raise _foreign_wal(index, f"it was written for index {current}, the file is index {main}")
        return None
    if main == companion:
        raise _foreign_wal(index, f"it was written for index {current}, the file is index {main}")
    raise _not_this_index(index, current, companion)


def _readable(uri: str) -> bool:
    try:
        _read(uri)
    except sqlite3.Error:
        return False
    return True


def _foreign_wal(index: Path, why: str) -> StoreError:
    return StoreError(
        f"{wal_path(index)}: this WAL file belongs to another index ({why}); nothing was written: move "
        f"{wal_path(index).name} aside (it belongs to another index) or restore both files together"
    )


def _not_this_index(index: Path, found: str, companion: str | None) -> StoreError:
    return StoreError(
        f"{index}: this index is not the one tagger wrote here (its id is {found}, {companion_path(index).name} "
        f"says {companion}); nothing was written: put the right index back, or, if you replaced it on purpose, "
        f"delete {companion_path(index)} and tagger takes this one"
    )


def identity_report(index: Path, conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    """For `tagger index check`: (problems, notes) about the id (the WAL was judged already)."""
    current = stored_id(conn)
    companion = read_companion(index)
    if current is None:
        return [], ["the index has no id yet (an index from before ids): the next scan gives it one"]
    if companion is None:
        return [], [f"{companion_path(index).name} is missing: the next scan writes it again (id {current})"]
    if companion != current:
        return [f"{companion_path(index).name} says {companion}, the index is {current}"], []
    return [], [f"id {current}, as {companion_path(index).name} says"]
