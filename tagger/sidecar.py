"""`<image>.tags.json` next to each image, written atomically.

A sidecar travels with the photo to other tools and backups, so it must never be seen
half-written: temp file in the same folder, fsync, rename over the old one.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tagger import __version__
from tagger.fileio import json_text
from tagger.labels import Tag

SCHEMA_VERSION = 2  # 2: a "keywords" list (rules and user corrections) next to all the raw top-k "tags"
SUFFIX = ".tags.json"


@dataclass(frozen=True)
class ImageFacts:
    sha256: str
    size: int
    width: int
    height: int


def sidecar_path(image: Path) -> Path:
    return image.with_name(image.name + SUFFIX)


def is_sidecar(path: Path) -> bool:
    return path.name.endswith(SUFFIX)


def sidecar_document(
    image: Path,
    facts: ImageFacts,
    model: str,
    weights_sha256: str,
    tags: Sequence[Tag],
    keywords: Sequence[dict[str, object]] = (),
) -> dict[str, Any]:
    """`tags` are the model's raw top-k guesses, all of them, as stored; `keywords` what the rules,
    thresholds and the user's corrections made of them. So a sidecar changes only when its
    keywords do, and `tagger retag` rewrites exactly those."""
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": f"tagger {__version__}",
        "image": {
            "file": image.name,
            "sha256": facts.sha256,
            "size": facts.size,
            "width": facts.width,
            "height": facts.height,
        },
        "model": {"name": model, "weights_sha256": weights_sha256},
        "tagged_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tags": [t.as_dict() for t in tags],
        "keywords": list(keywords),
    }


def mode_of(image: Path) -> int:
    """A sidecar's permissions: its image's read and write bits, so that whoever may read the photo
    may read its tags, whatever the writer's umask (the service runs with UMask=0027)."""
    try:
        return stat.S_IMODE(os.stat(image).st_mode) & 0o666
    except OSError:
        return 0o644


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, never a mix, even after a crash."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def write_sidecar(image: Path, document: dict[str, Any]) -> Path:
    path = sidecar_path(image)
    text = json_text(document, indent=2) + "\n"
    write_atomic(path, text.encode("utf-8"), mode_of(image))
    return path


def read_sidecar(image: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sidecar_path(image).read_text(encoding="utf-8"))
    return data


def remove_own_sidecar(image: Path) -> bool:
    """Delete the sidecar of a deleted image, but only one that tagger wrote."""
    try:
        generator = read_sidecar(image).get("generator", "")
    except (OSError, ValueError, AttributeError):
        return False
    if not str(generator).startswith("tagger"):
        return False
    sidecar_path(image).unlink(missing_ok=True)
    return True


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
