"""`tagger index check` and the salvage of `tagger index rebuild`: SQLite's own checks, the
identity, and the rows that only the index holds read back from a damaged one as far as they go.

The checks open the file `mode=ro` (through a WAL of its own) or `immutable=1` (the main file
alone, when the WAL beside it belongs to another index), so checking never writes.
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from tagger.errors import StoreError
from tagger.index.identity import ID_KEY, identity_report, is_damage, wal_path
from tagger.index.identity import check as check_identity
from tagger.index.db import Database

SHOWN_PROBLEMS = 10  # lines of SQLite's report shown; the rest counted
# What only the index holds (the sidecars hold images, tags, keywords and files): copied from a damaged
# index by `tagger index rebuild` as far as its pages can be read. Rows of contents the sidecars did
# not bring back are left out (embeddings reference images).
SALVAGED: dict[str, tuple[str, bool]] = {  # table: (columns, only rows of restored contents)
    "corrections": ("sha256, keyword, action, created_at", True),
    "embeddings": ("sha256, model, dims, vector, image_hash, written_at", True),
    "learned_tags": ("name, model, weights, bias, threshold, precision, positives, negatives, trained_at", False),
    "learned_examples": ("name, sha256, positive, added_at", False),
    "learned_matches": ("name, sha256, score", True),
    "settings": ("key, value", False),
}


@dataclass
class Checkup:
    """What `tagger index check` found: plain lines, and whether any of them is a problem."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damage: str | None = None  # what SQLite's checks found wrong with the pages (not the identity)

    @property
    def healthy(self) -> bool:
        return not self.problems


def check_index(index: Path, *, full: bool = False) -> Checkup:
    """quick_check (integrity_check when `full`), foreign_key_check, the id and the WAL's owner."""
    found = Checkup()
    if not index.exists():
        found.problems.append(f"{index}: no index here")
        return found
    if index.stat().st_size == 0:
        found.notes.append(f"{index}: an empty file: no index yet (`tagger scan` makes one)")
        return found
    uri = f"{index.resolve().as_uri()}?mode=ro"
    try:
        check_identity(index, uri)
    except StoreError as exc:
        found.problems.append(str(exc))
        uri += "&immutable=1"  # the main file alone: its own health
        found.notes.append(f"{index}: the main file is checked alone, without {wal_path(index).name}")
    started = time.monotonic()
    pragma = "integrity_check" if full else "quick_check"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        found.damage = str(exc)
        found.problems.append(f"{index}: cannot be opened: {exc}")
        return found
    try:
        report = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}")]
        if report != ["ok"]:
            found.damage = f"{pragma}: {report[0]}"
            found.problems.extend(f"{pragma}: {line}" for line in report[:SHOWN_PROBLEMS])
            if len(report) > SHOWN_PROBLEMS:
                found.problems.append(f"{pragma}: ... and {len(report) - SHOWN_PROBLEMS} more")
        else:
            found.notes.append(f"{pragma}: ok ({index.stat().st_size / 1e6:,.1f} MB in {time.monotonic() - started:.1f} s)")
        orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
        if orphans:
            found.damage = found.damage or "foreign_key_check"
            found.problems.append(f"foreign_key_check: {len(orphans)} rows point at rows that are not there")
        problems, notes = identity_report(index, conn)
        found.problems.extend(f"{index}: {line}" for line in problems)
        found.notes.extend(f"{index}: {line}" for line in notes)
    except sqlite3.Error as exc:
        found.damage = found.damage or str(exc)
        found.problems.append(f"{index}: {exc}")
    finally:
        conn.close()
    return found


def salvage(damaged: Path, into: Database, contents: set[str]) -> dict[str, tuple[int, str | None]]:
    """Copy SALVAGED's rows from the damaged index into `into` (inside the caller's transaction): per
    table, how many rows came over and why the rest did not (None when the table was read whole).
    The damaged file is read `immutable=1` (its WAL, if any, is not trusted) and never written."""
    result: dict[str, tuple[int, str | None]] = {}
    try:
        old = sqlite3.connect(f"{damaged.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        return {table: (0, str(exc)) for table in SALVAGED}
    old.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
    try:
        for table, (columns, by_content) in SALVAGED.items():
            copied, problem = 0, None
            marks = ", ".join("?" * len(columns.split(",")))
            try:
                for row in old.execute(f"SELECT {columns} FROM {table}"):
                    if by_content and row[1 if table == "learned_matches" else 0] not in contents:
                        continue
                    if table == "settings" and row[0] == ID_KEY:
                        continue
                    into.conn.execute(f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({marks})", row)
                    copied += 1
            except sqlite3.DatabaseError as exc:
                if not is_damage(exc) and "no such table" not in str(exc):
                    raise
                problem = str(exc)
            result[table] = (copied, problem)
    finally:
        old.close()
    return result
