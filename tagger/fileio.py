"""Which files tagger opens and how, and how their names travel: one policy for scan, daemon and viewer.

A library collects more than photos: FIFOs and sockets from NAS software, symlinks to
devices, sparse files of gigabytes, names in Latin-1 from old shares. So:

- Only regular files are read: the target is checked with a stat before it is opened,
  and again with fstat after a non-blocking open (a FIFO swapped in meanwhile never
  blocks the reader).
- A symlink is followed when its real target is a regular file inside one of the
  configured folders; one that leads elsewhere is refused with that reason. The scan,
  the daemon and the viewer all ask `Folders.target`, so a file is either tagged and
  served, or refused everywhere.
- At most `decode.max_file_mb` is read per file: checked from the size before reading,
  and enforced while reading (a file that grows, or a device, cannot get past it).
- What counts as an image (`is_image_name`) and which folders are never entered
  (`skipped_folder`: hidden ones and NAS, sync and filesystem bookkeeping) is decided
  here, for the scan, the watcher and the viewer's folder list alike.
- Files are written atomically (`write_atomic`), and times are written one way (`utc_text`).
- Linux file names are bytes. Python holds an undecodable byte as a lone surrogate
  (surrogateescape); `os.fsencode` gives the bytes back. Text output escapes them
  (`json_text`, `shown`), byte output writes them as they are.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from tagger.errors import DecodeError

READ_CHUNK = 1 << 20
MB = 1024 * 1024
_URL_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
DEFAULT_MAX_FILE_MB = 200  # a 100-megapixel camera JPEG or HEIC is 30-60 MB; big TIFFs and PNGs fit too

# Camera RAW files, read through LibRaw (tagger.engine.raw).
RAW_EXTENSIONS = frozenset(
    {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef", ".srw",
     ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".raw", ".rwl"}
)
# Video clips, sampled at a few keyframes through FFmpeg's libraries (tagger.engine.video).
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".3gp", ".mkv", ".webm"})
# Everything tagged: photos, RAWs and clips (an "image" throughout the index and the viewer).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif", ".avif", ".jxl"}
) | RAW_EXTENSIONS | VIDEO_EXTENSIONS
# Folders that hold no photos of the user's: Synology thumbnails, Syncthing's bookkeeping and
# old versions, Python caches, NAS recycle bins and snapshots, fsck's lost+found. Hidden
# folders (a leading dot) are skipped too.
SKIPPED_FOLDERS = frozenset(
    {"@eaDir", ".stfolder", ".stversions", "__pycache__", "#recycle", "#snapshot", "lost+found"}
)
UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # to the second: text order is time order


def is_image_name(path: PurePath) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_video_name(path: PurePath | str) -> bool:
    """A clip, by its name: read by seeking (tagger.engine.video), never whole."""
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def skipped_folder(name: str) -> bool:
    """A folder that scan, watcher and viewer never enter: hidden, or bookkeeping (SKIPPED_FOLDERS)."""
    return name.startswith(".") or name in SKIPPED_FOLDERS


def in_skipped_folder(path: PurePath) -> bool:
    """Some folder on the way to `path` (below the filesystem root) is skipped."""
    return any(skipped_folder(part) for part in path.parts[1:-1])


def utc_text(timestamp: float | None = None) -> str:
    """A time as the index and sidecars write it (now, without `timestamp`)."""
    when = datetime.now(timezone.utc) if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)
    return when.strftime(UTC_FORMAT)


def mode_of(image: Path) -> int:
    """A sidecar's permissions: its image's read and write bits, so that whoever may read the photo
    may read its tags, whatever the writer's umask (the service runs with UMask=0027)."""
    try:
        return stat.S_IMODE(os.stat(image).st_mode) & 0o666
    except OSError:
        return 0o644


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, never a mix, even after a crash: temp file in the
    same folder, fsync, rename over the old one (sidecars, XMP, thumbnails, the daemon's status).
    Inside `synced_together`, the two fsyncs wait for the one sync at its end instead."""
    batch: _SyncBatch | None = getattr(_batches, "current", None)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if batch is None:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
        if batch is None:
            _fsync_dir(path.parent)
        else:
            batch.folders.add(os.fspath(path.parent))
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


class _SyncBatch:
    def __init__(self) -> None:
        self.folders: set[str] = set()


_batches = threading.local()
_libc_syncfs: Callable[[int], int] | None = None


@contextmanager
def synced_together() -> Iterator[None]:
    """Files written by write_atomic inside are made durable together when it ends: one syncfs(2) per
    filesystem touched instead of two fsyncs per file (a folder of 100 copies: 1 sync, not 200).

    Still atomic (each file is renamed over the old one whole); what a crash or power loss before
    the end can lose is whole files, never part of one. The caller commits the index rows that
    name these files only after the block ends, so a committed row implies its files are on disk.
    Only this thread's writes are batched.
    """
    if getattr(_batches, "current", None) is not None:  # nested: the outer block syncs
        yield
        return
    batch = _batches.current = _SyncBatch()
    try:
        yield
    finally:
        _batches.current = None
    devices: dict[int, str] = {}
    for folder in batch.folders:
        try:
            devices.setdefault(os.stat(folder).st_dev, folder)
        except OSError:
            continue
    for folder in devices.values():
        _sync_filesystem(folder)


def _sync_filesystem(folder: str) -> None:
    """syncfs(2) on the filesystem holding `folder` (Linux); elsewhere sync(2), which flushes them all."""
    global _libc_syncfs
    if _libc_syncfs is None:
        try:
            _libc_syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        except (OSError, AttributeError):
            _libc_syncfs = _sync_all
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        os.sync()
        return
    try:
        if _libc_syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _sync_all(fd: int) -> int:
    os.sync()
    return 0


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; some filesystems refuse, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Folders:
    """The configured folders, as real paths: what may be read and served."""

    def __init__(self, folders: Iterable[Path | str]) -> None:
        self.roots = tuple(os.path.realpath(f) for f in folders)

    def root_of(self, path: str) -> str | None:
        """The configured folder holding `path` (the deepest one, when folders nest)."""
        holding = [r for r in self.roots if path == r or path.startswith(r.rstrip("/") + "/")]
        return max(holding, key=len) if holding else None

    def inside(self, path: str) -> bool:
        return self.root_of(path) is not None

    def target(self, path: Path | str) -> tuple[str, os.stat_result]:
        """The real regular file behind `path` and its stat; DecodeError says why it is refused.

        Nothing is opened here, so a FIFO or a device is refused without being touched.
        """
        name = os.fspath(path)
        try:
            info = os.lstat(name)
            real = name
            if stat.S_ISLNK(info.st_mode):
                real = os.path.realpath(name)
                if not self.inside(real):
                    raise DecodeError(f"a symlink that leads outside the configured folders (to {shown(real)})")
                info = os.stat(real)
        except FileNotFoundError:
            raise DecodeError("cannot read file: not there any more (deleted, or a broken symlink)") from None
        except OSError as exc:
            raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError(f"not a regular file: {file_kind(info.st_mode)}")
        return real, info


# What write_atomic leaves when it is killed between creating its temporary file and renaming it
# (tempfile.mkstemp's 8 characters), for a sidecar: .IMG_1.jpg.tags.json.k3j9_x2a.tmp
LEFTOVER = re.compile(r"\..+\.(?:tags\.json|xmp)\.[a-z0-9_]{8}\.tmp")


@dataclass(frozen=True)
class FolderListing:
    """One folder's entries as a scan uses them: images, folders to enter, every name (which
    sidecars are there), and a killed run's temporary sidecar files (LEFTOVER)."""

    images: list[str]
    folders: list[str]
    names: frozenset[str]
    leftovers: list[str]


def list_folder(folder: Path) -> FolderListing:
    """The entries of one folder, sorted; OSError when it cannot be listed.

    Whatever kind of file bears an image name is listed (a FIFO, a symlink, a socket): reading
    it refuses it with the reason, so it is never skipped silently. Sidecars (.json, .xmp) and
    hidden names are not images. Symlinked folders and tagger.fileio.skipped_folder are not
    entered. A scan walks one folder at a time from a list of folders still to list, never by
    recursion (os.walk raised RecursionError on a chain of 1,000 nested folders) and never
    holding the whole library's names (memory stays the largest folder's).
    """
    with os.scandir(folder) as listing:
        entries = [(entry.name, _is_folder(entry)) for entry in listing]
    files = sorted(name for name, is_folder in entries if is_folder is False)
    return FolderListing(
        images=[name for name in files if not name.startswith(".") and is_image_name(PurePath(name))],
        folders=sorted(name for name, is_folder in entries if is_folder is True and not skipped_folder(name)),
        names=frozenset(name for name, _ in entries),
        leftovers=[name for name in files if name.startswith(".") and LEFTOVER.fullmatch(name)],
    )


def iter_images(
    root: Path, unlisted: list[tuple[Path, str]] | None = None, leftovers: list[Path] | None = None
) -> Iterator[Path]:
    """Paths of images under `root` (list_folder's, folder by folder), or `root` itself when it is no
    folder. A folder that cannot be listed goes into `unlisted` with the reason, and a killed run's
    temporary sidecar files into `leftovers`."""
    if not root.is_dir():
        yield root
        return
    pending = [root]  # folders still to list, the next one last
    while pending:
        folder = pending.pop()
        try:
            listing = list_folder(folder)
        except OSError as exc:
            if unlisted is not None:
                unlisted.append((folder, exc.strerror or str(exc)))
            continue
        yield from (folder / name for name in listing.images)
        if leftovers is not None:
            leftovers.extend(folder / name for name in listing.leftovers)
        pending.extend(folder / name for name in reversed(listing.folders))


def _is_folder(entry: os.DirEntry[str]) -> bool | None:
    """True for a folder to enter, None for a symlink to one (listed with neither), False otherwise."""
    try:
        if not entry.is_dir():
            return False
        return None if entry.is_symlink() else True
    except OSError:
        return False


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a Unix socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
    )
    return next((word for test, word in kinds if test(mode)), "a special file")


def too_large(size: int, max_bytes: int) -> str:
    return f"too large: {size / MB:,.1f} MB is over the limit of {max_bytes / MB:,.0f} MB (decode.max_file_mb)"


# A file this big is read only if its first bytes are an image format's: a library full of
# 150 MB disk images or videos with a .jpg name must not cost 150 MB of memory each.
SNIFF_ABOVE = 32 * MB
_SIGNATURES = (
    b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
    b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n",  # JPEG XL: a bare codestream, or its ISO container
    b"IIRO", b"IIRS", b"MMOR", b"IIU\x00", b"FUJIFILMCCD-RAW",  # RAWs not in a TIFF: Olympus, Panasonic, Fujifilm
)


def looks_like_an_image(head: bytes) -> bool:
    """Whether a file's first 16 bytes start one of the formats tagger decodes (HEIF, AVIF, WebP, JPEG XL included)."""
    if head.startswith(_SIGNATURES):
        return True
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp"  # HEIC, HEIF, AVIF: an ISO media file; the decoder decides


def is_gone(path: Path | str) -> bool:
    """Whether nothing is at `path`, for certain. One that cannot be reached (permission denied,
    an I/O error, a stale network handle) is not gone: its index rows and sidecar stay."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def is_empty_folder(folder: Path) -> bool:
    """Nothing in it, or nothing that can be read now: what an unmounted share's mount point shows."""
    try:
        return not any(folder.iterdir())
    except OSError:
        return True


def read_small(path: Path, max_bytes: int) -> bytes:
    """The whole of a small file that another program may have put there (a sidecar, an XMP file,
    a config): OSError saying why not, FileNotFoundError when there is none.

    Checked to be a regular file before it is opened, and opened without blocking: a FIFO at a
    sidecar's name made the scan wait forever for a writer, and a device is never opened.
    """
    refusal = _not_small(os.stat(path), max_bytes)
    if refusal:
        raise OSError(errno.EINVAL, refusal)
    return _read_regular(path, max_bytes)


def _not_small(info: os.stat_result, max_bytes: int) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file: {file_kind(info.st_mode)}"
    if info.st_size > max_bytes:
        return f"too large: {info.st_size / MB:,.1f} MB, where at most {max_bytes / MB:,.0f} MB is read"
    return None


def read_limited(path: Path | str, max_bytes: int, folders: Folders | None = None) -> bytes:
    """The whole of a regular file, at most `max_bytes`; DecodeError names why not.

    Without `folders` (a file named on the command line) any symlink is followed, but
    the file must still be regular.
    """
    if folders is None:
        folders = Folders(["/"])
    real, info = folders.target(path)
    if info.st_size > max_bytes:
        raise DecodeError(too_large(info.st_size, max_bytes))
    try:
        return _read_regular(real, max_bytes, _no_image)
    except _Refused as exc:
        grew = exc.errno == errno.EFBIG
        raise DecodeError(too_large(max_bytes + 1, max_bytes) + "; it grew while being read" if grew else exc.strerror) from None
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None


def open_regular(path: Path | str, folders: Folders | None = None) -> tuple[BinaryIO, int]:
    """A regular file opened for reading by seeking (a clip), and its size; DecodeError names why not.

    The same checks as read_limited: the target's stat, a non-blocking open (a FIFO swapped in
    never blocks) and fstat again; then the file is switched back to blocking reads.
    """
    real, _ = (folders or Folders(["/"])).target(path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise DecodeError(f"not a regular file: {file_kind(opened.st_mode)}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), opened.st_size
    except BaseException:
        os.close(fd)
        raise


class _Refused(OSError):
    """What _read_regular found wrong with an opened file (errno and reason), as against the OS's own errors."""


def _read_regular(
    path: Path | str, max_bytes: int, refuse_head: Callable[[int, bytes], str | None] | None = None
) -> bytes:
    """The bytes of a file the caller has stat'ed, opened without blocking and checked again with
    fstat (a FIFO swapped in meanwhile never blocks), read in chunks up to `max_bytes`.

    `refuse_head(size, first 16 bytes)` may refuse a big file before the rest is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):  # swapped for something else since the stat
            raise _Refused(errno.EINVAL, f"not a regular file: {file_kind(opened.st_mode)}")
        chunks: list[bytes] = []
        total = 0
        if refuse_head is not None and opened.st_size > SNIFF_ABOVE:
            head = os.read(fd, 16)
            refusal = refuse_head(opened.st_size, head)
            if refusal:
                raise _Refused(errno.EINVAL, refusal)
            chunks.append(head)
            total = len(head)
        while chunk := os.read(fd, min(READ_CHUNK, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise _Refused(errno.EFBIG, f"over {max_bytes / MB:,.0f} MB: it grew while being read")
    finally:
        os.close(fd)
    return b"".join(chunks)


def _no_image(size: int, head: bytes) -> str | None:
    """Why a file over SNIFF_ABOVE is not read: its first bytes are no image format's."""
    if looks_like_an_image(head):
        return None
    return f"not an image: {size / MB:,.0f} MB whose first bytes are no image format's (not read)"


def shown(path: Path | str) -> str:
    """A name as a person reads it: undecodable bytes as \\xff, never an encoding error."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def json_text(value: Any, **options: Any) -> str:
    """JSON with undecodable name bytes as \\udcXX escapes: valid UTF-8 JSON that Python's
    json.loads turns back into the same str (os.fsencode then gives the original bytes)."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def url_text(path: str) -> str:
    """A name as URL text that survives decoding as UTF-8: '%' as %25 and each undecodable
    byte as %XX, before the usual URL quoting (which makes them %2525 and %25XX)."""
    if "%" not in path and path.isascii():
        return path
    return "".join("%25" if c == "%" else f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in path)


def from_url_text(text: str) -> str:
    """The name `url_text` made this text from."""
    if "%" not in text:
        return text
    return _URL_ESCAPE.sub(_unescape, text)


def _unescape(match: re.Match[str]) -> str:
    value = int(match.group(1), 16)
    return "%" if value == 0x25 else chr(0xDC00 + value) if value >= 0x80 else match.group(0)


def write_problem(exc: OSError, path: Path | str) -> str:
    """Why a file could not be written; a full disk is named as such, with the folder."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding {shown(os.path.dirname(os.fspath(path)))} is full ({exc.strerror})"
    return str(exc.strerror or exc)
