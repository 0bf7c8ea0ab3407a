"""tagger's own trash: copies the user chose to drop, moved out of sight, never deleted.

A file goes to `<its configured folder>/.tagger-trash/<YYYY-MM-DD>/<its path inside that folder>`:
a rename on the same filesystem, so a move is whole or not at all (never a half copy), and
undone by moving it back. Scan and watcher skip hidden folders (tagger.fileio.skipped_folder), so
nothing in the trash is tagged again. Its sidecars follow it by the rule of tagger.library.places
(beside it, or in the mirror tree of sidecar.folder); a name already in the trash is never
overwritten: the newcomer gets " (2)", " (3)", ... before its extension. Then its index row goes.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tagger.config import Config
from tagger.fileio import Folders
from tagger.index import Index
from tagger.library.jsonsidecar import sidecar_path
from tagger.library.places import beside, made_for

log = logging.getLogger(__name__)

TRASH_FOLDER = ".tagger-trash"
MAX_SUFFIX = 1000


@dataclass(frozen=True)
class Refusal:
    """A file left where it was, and why."""

    path: str
    reason: str


@dataclass
class Trashed:
    moved: dict[str, str] = field(default_factory=dict)  # path -> its place in the trash
    refused: list[Refusal] = field(default_factory=list)
    freed: int = 0  # bytes of the files moved


def trash_root(config: Config, path: str) -> Path | None:
    """The trash of the configured folder holding `path`; None outside them."""
    root = Folders(config.folders).root_of(os.path.realpath(os.path.dirname(path)) + "/")
    return None if root is None else Path(root) / TRASH_FOLDER


def writable(config: Config, path: str) -> bool:
    """This process may create the trash beside `path`'s configured folder (not a read-only
    mount, as tagger-web.service has with ReadOnlyPaths)."""
    trash = trash_root(config, path)
    return trash is not None and os.access(trash if trash.exists() else trash.parent, os.W_OK)


def place_in_trash(trash: Path, root: Path, path: Path, day: str) -> Path:
    """Where `path` goes: its place under the day's folder, with a suffix when that name is taken."""
    first = trash / day / path.relative_to(root)
    stem, suffix = os.path.splitext(first.name)
    candidate = first
    for n in range(2, MAX_SUFFIX):
        if not os.path.lexists(candidate):
            return candidate
        candidate = first.with_name(f"{stem} ({n}){suffix}")
    raise FileExistsError(errno.EEXIST, f"{MAX_SUFFIX} files of this name are in the trash already", str(first))


def unchanged(index: Index, path: str, sha256: str) -> str | None:
    """Why `path` cannot be trusted to still hold `sha256` (None when it can): gone, changed on
    disk since it was indexed, or indexed with another content since the groups were made."""
    record = index.file_record(path)
    if record is None or record.status != "tagged":
        return "not in the index any more"
    if record.sha256 != sha256:
        return "its content changed since the groups were made (reload the page)"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "not there any more"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a symlink or another kind of file): left as it is"
    if info.st_size != record.size or info.st_mtime_ns != record.mtime_ns:
        return "changed on disk since it was indexed (scan it again, then look again)"
    return None


def move_to_trash(config: Config, index: Index, expected: Mapping[str, str]) -> Trashed:
    """Move each file of `expected` (path -> the content it should hold) to the trash with its
    sidecars, then drop their rows in one transaction. A file that cannot go is refused with its
    reason; the others still go. `index` is the writer's (the caller holds its lock)."""
    result = Trashed()
    day = time.strftime("%Y-%m-%d")
    mirror = config.sidecar.folder
    for path, sha256 in expected.items():
        reason = unchanged(index, path, sha256)
        trash = trash_root(config, path)
        if reason is None and trash is None:
            reason = "outside the configured folders"
        if reason is not None or trash is None:
            result.refused.append(Refusal(path, reason or "outside the configured folders"))
            continue
        source = Path(path)
        try:
            size = source.stat().st_size
            real = Path(os.path.realpath(source.parent)) / source.name  # as the configured folder is held
            target = place_in_trash(trash, trash.parent, real, day)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(source, target)
        except OSError as exc:
            result.refused.append(Refusal(path, _why_not_moved(exc)))
            continue
        result.moved[path] = str(target)
        result.freed += size
        _move_sidecars(source, target, mirror)
    if result.moved:
        with index.transaction("the removal of files moved to the trash"):
            index.delete_files(list(result.moved))
    return result


def _why_not_moved(exc: OSError) -> str:
    if exc.errno == errno.EXDEV:
        return "on another filesystem than its configured folder: not moved (the trash never copies)"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"the library is read-only here ({exc.strerror}): not moved"
    return f"not moved: {exc.strerror or exc}"


def _move_sidecars(source: Path, target: Path, mirror: Path | None) -> None:
    """The JSON and XMP sidecars follow the image. An XMP named after the stem (IMG_1.xmp) stays
    when another file of that stem (IMG_1.CR2 beside IMG_1.jpg) is still there: it is theirs too."""
    moves = [(sidecar_path(source, mirror), sidecar_path(target, mirror)),
             (beside(source, source.name + ".xmp", mirror), beside(target, target.name + ".xmp", mirror))]
    stem_xmp = beside(source, source.stem + ".xmp", mirror)
    if stem_xmp.exists() and not _stem_shared(source):
        moves.append((stem_xmp, beside(target, target.stem + ".xmp", mirror)))
    for old, new in moves:
        if not old.exists():
            continue
        try:
            if os.path.lexists(new):
                raise FileExistsError(errno.EEXIST, "already in the trash", str(new))
            os.rename(old, made_for(new, mirror))
        except OSError as exc:
            log.warning("%s: sidecar not moved to the trash (%s): %s", old, new, exc.strerror or exc)


def _stem_shared(image: Path) -> bool:
    """Another file of the same stem is in the image's folder (not a sidecar)."""
    prefix = image.stem + "."
    try:
        with os.scandir(image.parent) as entries:
            return any(
                e.name.startswith(prefix) and e.name != image.name and not e.name.endswith((".xmp", ".tags.json"))
                for e in entries
            )
    except OSError:
        return True  # unsure: leave it
