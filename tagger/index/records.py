"""What the index hands back: one frozen record per kind of row a caller reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tagger.engine.labels import Tag
from tagger.tags.terms import Correction, KeywordRow

Status = Literal["tagged", "failed"]  # files.status
SortKey = tuple[float | int | str, str]  # (the sort column's value, path) of a file in a listing


@dataclass(frozen=True)
class ImageFacts:
    """What a scan learns of one content besides its tags: its hash, byte size and pixel size."""

    sha256: str
    size: int
    width: int
    height: int
    duration: float | None = None  # a clip's length in seconds; None for a still image


@dataclass(frozen=True)
class StoredContent:
    """One content's raw tags, keywords and corrections, for a re-tag."""

    sha256: str
    tags: list[Tag]
    keywords: list[KeywordRow]
    corrections: list[Correction]


@dataclass(frozen=True)
class FileStamp:
    """Besides size and mtime, what changes when a file is replaced by another (a restore, rsync
    --times): its inode change time and its inode number."""

    ctime_ns: int
    inode: int


@dataclass(frozen=True, slots=True)
class FolderRow:
    """A file's row as a scan compares it with the file's stat, one folder at a time."""

    size: int
    mtime_ns: int
    ctime_ns: int | None
    inode: int | None
    status: Status
    model: str | None
    sidecar: str | None


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str | None
    size: int
    mtime_ns: int
    status: Status
    error: str | None
    sidecar: str | None
    model: str | None
    # None in a row from before migration 11; keyword-only, so that ImageDetail adds fields after them
    ctime_ns: int | None = field(default=None, kw_only=True)
    inode: int | None = field(default=None, kw_only=True)


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
    duration: float | None = None  # a clip's length in seconds


@dataclass(frozen=True)
class TagCount:
    class_id: int
    wnid: str
    label: str
    label_zh: str
    count: int
