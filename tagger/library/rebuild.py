"""`tagger index rebuild`: a new index from the JSON sidecars, without a model run.

Each image of the configured folders whose sidecar still describes it (the same size, and the
same content hash: every file is read and hashed, since a sidecar records no mtime) gets its
images, tags, keywords and files rows back through the index's own write methods; a keyword of
the user's own comes back as an "add" correction. What only the index held (removals, embeddings,
learned tags with their examples and matches, settings) is copied from the damaged index as far
as its pages can be read (tagger.index.health.salvage). The new index is made at a temporary
name and renamed into place at the end; the old one is moved aside, never deleted.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagger.config import Config
from tagger.engine.labels import Tag
from tagger.engine.video import sampled_sha256
from tagger.errors import TaggerError
from tagger.fileio import is_video_name, iter_images, open_regular
from tagger.index import Index, identity
from tagger.index.health import salvage
from tagger.index.records import FileStamp, ImageFacts
from tagger.library.jsonsidecar import read_sidecar, sidecar_path
from tagger.tags.terms import KeywordRow

BATCH = 500  # files per transaction
CHUNK = 1 << 20


@dataclass
class Rebuilt:
    """What `tagger index rebuild` did."""

    restored: int = 0  # files with their rows back
    contents: int = 0
    unrestored: list[tuple[str, str]] = field(default_factory=list)  # (file, why): for `tagger scan`
    salvaged: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    moved_aside: Path | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class _Restored:
    path: Path
    facts: ImageFacts
    model: str
    weights_sha256: str
    tags: list[Tag]
    keywords: list[KeywordRow]
    mtime_ns: int
    stamp: FileStamp
    sidecar: Path


def rebuild(config: Config, on_progress: Callable[[int], None] | None = None) -> Rebuilt:
    """Build the new index beside the old one, then swap them (call holding the index's lock)."""
    started = time.monotonic()
    index = config.index
    building = index.with_name(f".{index.name}.rebuilding")
    for leftover in (building, *(Path(f"{building}{s}") for s in ("-wal", "-shm", ".id"))):
        leftover.unlink(missing_ok=True)  # a rebuild killed before its end
    keep_id = identity.read_companion(index)
    if keep_id is not None:  # the rebuilt index is the same index: the companion file stays true
        identity.write_companion(building, keep_id)
    result = Rebuilt()
    contents: set[str] = set()
    with Index.open(building) as store:
        batch: list[_Restored] = []
        for root in config.folders:
            for path in iter_images(root):
                restored = _restore(path, config, result)
                if restored is None:
                    continue
                batch.append(restored)
                if len(batch) >= BATCH:
                    _save(store, batch, contents)
                    result.restored += len(batch)
                    if on_progress is not None:
                        on_progress(len(batch))
                    batch = []
        _save(store, batch, contents)
        result.restored += len(batch)
        if index.exists():
            with store.transaction("the rows salvaged from the damaged index"):
                result.salvaged = salvage(index, store, contents)
    result.contents = len(contents)
    result.moved_aside = _swap(index, building)
    result.seconds = time.monotonic() - started
    return result


def _restore(path: Path, config: Config, result: Rebuilt) -> _Restored | None:
    """The rows of one image from its sidecar, if the sidecar still describes it."""
    mirror = config.sidecar.folder
    try:
        document = read_sidecar(path, mirror)
        info = path.stat()
    except FileNotFoundError:
        result.unrestored.append((str(path), "no sidecar"))
        return None
    except (OSError, ValueError) as exc:
        result.unrestored.append((str(path), f"{sidecar_path(path, mirror)}: unreadable: {exc}"))
        return None
    try:
        image, model = document["image"], document["model"]
        facts = ImageFacts(
            str(image["sha256"]), int(image["size"]), int(image["width"]), int(image["height"]),
            float(image["duration"]) if image.get("duration") is not None else None,
        )
        tags = [_tag(t) for t in document["tags"]]
        keywords = [_keyword(k) for k in document["keywords"]]
        name, weights = str(model["name"]), str(model["weights_sha256"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        result.unrestored.append((str(path), f"{sidecar_path(path, mirror)}: not a tagger sidecar ({exc!r})"))
        return None
    if info.st_size != facts.size:
        result.unrestored.append((str(path), "changed since its sidecar was written (another size)"))
        return None
    try:
        digest = content_sha256(path)
    except OSError as exc:
        result.unrestored.append((str(path), f"cannot read file: {exc.strerror or exc}"))
        return None
    if digest != facts.sha256:
        result.unrestored.append((str(path), "changed since its sidecar was written (another content)"))
        return None
    return _Restored(path, facts, name, weights, tags, keywords, info.st_mtime_ns, FileStamp(info.st_ctime_ns, info.st_ino),
                     sidecar_path(path, mirror))


def content_sha256(path: Path) -> str:
    """The content hash a scan records: a photo's bytes, a clip's sampled hash (tagger.engine.video)."""
    fh, size = open_regular(path)
    with fh:
        if is_video_name(path):
            return sampled_sha256(fh, size)
        digest = hashlib.sha256()
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
        return digest.hexdigest()


def _tag(raw: Any) -> Tag:
    frame = raw.get("frame_s")
    return Tag(int(raw["class_id"]), str(raw["wnid"]), str(raw["label"]), str(raw["label_zh"]), float(raw["score"]),
               None if frame is None else float(frame))


def _keyword(raw: Any) -> KeywordRow:
    source = raw["source"]
    if source not in ("model", "user"):
        raise ValueError(f"keyword source {source!r}")
    return KeywordRow(str(raw["keyword"]), str(raw["keyword_zh"]), str(raw["path"]), str(raw["path_zh"]),
                      float(raw["score"]), source)


def _save(store: Index, batch: list[_Restored], contents: set[str]) -> None:
    if not batch:
        return
    with store.transaction("the rows rebuilt from sidecars"):
        for item in batch:
            sha = item.facts.sha256
            if sha not in contents:  # copies share one content's rows; the first sidecar read gives them
                contents.add(sha)
                store.save_image(item.facts, item.model, item.weights_sha256, item.tags)
                store.save_keywords(sha, item.keywords, replacing=False)
                for keyword in item.keywords:
                    if keyword.source == "user":
                        store.save_correction(sha, keyword.keyword, "add")
            store.save_file(str(item.path), sha, item.facts.size, item.mtime_ns, str(item.sidecar), None, item.stamp)


def _swap(index: Path, building: Path) -> Path | None:
    """The old index (with its -wal, if it holds frames) moved aside, the new one renamed into its place."""
    aside = None
    if index.exists():
        aside = index.with_name(f"{index.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        wal, shm = identity.wal_path(index), Path(f"{index}-shm")
        try:
            os.replace(index, aside)
            if wal.exists() and wal.stat().st_size > 0:  # frames of the old index: kept with it
                os.replace(wal, f"{aside}-wal")
            wal.unlink(missing_ok=True)
            shm.unlink(missing_ok=True)  # derived from the WAL; SQLite makes it again
        except OSError as exc:
            raise TaggerError(f"{index}: cannot move the old index aside: {exc.strerror or exc}") from None
    os.replace(building, index)
    if identity.read_companion(building) is not None:
        os.replace(identity.companion_path(building), identity.companion_path(index))
    identity.clear_damage(index)
    return aside

