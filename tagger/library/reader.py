"""A scan's first step: which files changed, their bytes read and hashed, contents already known reused.

What is left needs a model run. Reader threads only read and hash; the index is touched from the
scan's own thread alone.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tagger.config import Config
from tagger.cpu import yield_to_model
from tagger.errors import DecodeError
from tagger.engine.video import sampled_sha256
from tagger.fileio import Folders, is_video_name, open_regular, read_limited, too_large
from tagger.index import Index
from tagger.index.records import FileStamp
from tagger.library.recorder import Copy, Follower, Recorder
from tagger.library.summary import ScanSummary


@dataclass(frozen=True)
class Read:
    """A file read and hashed whose content is not in the index yet. A clip is not read whole: its
    `data` is empty, and it is decoded from its path by seeking (tagger.engine.video)."""

    path: Path
    mtime_ns: int
    data: bytes
    sha256: str
    size: int  # bytes on disk (a photo's: len(data))
    video: bool = False
    stamp: FileStamp | None = None  # ctime and inode when it was read


class Reader:
    """Reads a batch of paths for one model; records what needs no model run through `recorder`."""

    def __init__(self, config: Config, store: Index, recorder: Recorder, model: str) -> None:
        self.config = config
        self.store = store
        self.recorder = recorder
        self.model = model
        self.folders = Folders(config.folders)  # what a symlink may lead to (tagger.fileio)
        # Below the model's priority (tagger.cpu.yield_to_model): the model gets a core at once.
        self._threads = ThreadPoolExecutor(1, "tagger-read", yield_to_model)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.folders = Folders(config.folders)

    def close(self) -> None:
        self._threads.shutdown(wait=True)

    def read_new(self, paths: Sequence[Path], summary: ScanSummary) -> list[Read]:
        """Cheap checks, read + hash, reuse from the index: what is left needs a model run."""
        stamps: list[tuple[str, FileStamp]] = []  # unchanged files recorded before ctime and inode were kept
        changed = [(p, s) for p in paths if (s := self._changed_stat(p, summary, stamps)) is not None]
        if stamps:
            with self.store.transaction("the ctime and inode of unchanged files"):
                self.store.save_stamps(stamps)
        fresh: list[Read] = []
        limits, folders = (self.config.decode.max_file_bytes, self.config.video.max_file_bytes), self.folders
        reads = self._threads.map(lambda p: _read_and_hash(p, limits, folders), [p for p, _ in changed])
        for (path, stat), read in zip(changed, reads):
            stamp = FileStamp(stat.st_ctime_ns, stat.st_ino)
            if isinstance(read, DecodeError):
                self.recorder.fail(path, None, stat.st_size, stat.st_mtime_ns, str(read), summary, stamp)
                continue
            cached = self.store.cached_image(read.sha256, self.model)
            if cached is None:
                if self.recorder.classifying(read.sha256):  # a copy of a file out to the model right now
                    self.recorder.follow(read.sha256, Follower(path, read.size, stat.st_mtime_ns, stamp, summary))
                else:
                    fresh.append(Read(path, stat.st_mtime_ns, read.data, read.sha256, read.size, read.video, stamp))
                continue
            if self.recorder.shares_xmp(path):
                facts, tags, weights = cached.facts, cached.tags, cached.weights_sha256
                if not self.recorder.record(path, facts, stat.st_mtime_ns, tags, weights, None, stamp):
                    summary.sidecar_errors += 1
            else:
                self.recorder.add_copy(Copy(path, cached, stat.st_mtime_ns, stamp), summary)
            summary.reused += 1
        return fresh

    def _changed_stat(
        self, path: Path, summary: ScanSummary, stamps: list[tuple[str, FileStamp]]
    ) -> os.stat_result | None:
        """The file's stat if it needs work; None if it is unchanged since it was last seen, or unreadable.

        Unchanged is size, mtime, ctime and inode all as recorded: a restore or `rsync --times` puts
        another photo in place with the same size and mtime, but a new ctime and inode. A row from
        before ctime and inode were kept gets them here (into `stamps`), without a read."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            if path.is_symlink():
                self.recorder.fail(path, None, 0, 0, "a broken symlink (its target is not there)", summary)
            else:  # deleted since it was listed or announced: nothing to tag
                self.recorder.forget([path])
            return None
        except OSError as exc:
            self.recorder.fail(path, None, 0, 0, f"cannot read file: {exc.strerror or exc}", summary)
            return None
        record = self.store.file_record(str(path))
        if record and record.size == stat.st_size and record.mtime_ns == stat.st_mtime_ns:
            same = record.ctime_ns is None or (record.ctime_ns, record.inode) == (stat.st_ctime_ns, stat.st_ino)
            if same and (record.status == "failed" or (record.model == self.model and self.recorder.sidecars_current(path))):
                if record.ctime_ns is None:
                    stamps.append((str(path), FileStamp(stat.st_ctime_ns, stat.st_ino)))
                summary.unchanged += 1
                return None
        return stat


def _read_and_hash(path: Path, limits: tuple[int, int], folders: Folders) -> Read | DecodeError:
    """A photo read whole and hashed; a clip hashed by seeking (tagger.engine.video.sampled_sha256)
    under its own limit, video.max_file_mb, since it is never held in memory."""
    try:
        if is_video_name(path):
            fh, size = open_regular(path, folders)
            with fh:
                if size > limits[1]:
                    raise DecodeError(too_large(size, limits[1]).replace("decode.max_file_mb", "video.max_file_mb"))
                return Read(path, 0, b"", sampled_sha256(fh, size), size, video=True)
        data = read_limited(path, limits[0], folders)
    except DecodeError as exc:
        return exc
    except OSError as exc:
        return DecodeError(f"cannot read file: {exc.strerror or exc}")
    return Read(path, 0, data, hashlib.sha256(data).hexdigest(), len(data))
