"""`<image>.tags.json` next to each image, written atomically.

A sidecar travels with the photo to other tools and backups, so it must never be seen
half-written: temp file in the same folder, fsync, rename over the old one.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tagger import __version__
from tagger.fileio import MB, json_text, mode_of, read_small, utc_text, write_atomic
from tagger.engine.labels import Tag
from tagger.index.records import ImageFacts
from tagger.library.places import beside, made_for

SCHEMA_VERSION = 2  # 2: a "keywords" list (rules and user corrections) next to all the raw top-k "tags"
SUFFIX = ".tags.json"
MAX_SIDECAR_BYTES = MB  # ours are a few kB: a bigger file at the name is another program's


def sidecar_path(image: Path, mirror: Path | None = None) -> Path:
    """IMG_1.jpg.tags.json beside the image, or in the sidecar folder's mirror tree (tagger.library.places)."""
    return beside(image, image.name + SUFFIX, mirror)


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
    about: dict[str, Any] = {
        "file": image.name,
        "sha256": facts.sha256,
        "size": facts.size,
        "width": facts.width,
        "height": facts.height,
    }
    if facts.duration is not None:  # a clip: its length, and each tag's "frame_s" says where it was seen
        about["duration"] = round(facts.duration, 3)
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": f"tagger {__version__}",
        "image": about,
        "model": {"name": model, "weights_sha256": weights_sha256},
        "tagged_at": utc_text(),
        "tags": [t.as_dict() for t in tags],
        "keywords": list(keywords),
    }


def write_sidecar(image: Path, document: dict[str, Any], mirror: Path | None = None) -> Path:
    path = made_for(sidecar_path(image, mirror), mirror)
    text = json_text(document, indent=2) + "\n"
    write_atomic(path, text.encode("utf-8"), mode_of(image))
    return path


def refresh_sidecar(image: Path, document: dict[str, Any], mirror: Path | None = None) -> tuple[Path, bool]:
    """write_sidecar, unless the sidecar there already says the same but for `tagged_at`; whether
    it was written. A retag or a change of settings then rewrites only the sidecars that differ."""
    path = sidecar_path(image, mirror)
    try:
        existing = read_small(path, MAX_SIDECAR_BYTES)
        stamp = json.loads(existing.decode("utf-8")).get("tagged_at")
    except (OSError, ValueError, RecursionError, AttributeError):
        stamp = None
    if isinstance(stamp, str):
        same = (json_text({**document, "tagged_at": stamp}, indent=2) + "\n").encode("utf-8")
        if same == existing:
            return path, False
    return write_sidecar(image, document, mirror), True


def read_sidecar(image: Path, mirror: Path | None = None) -> dict[str, Any]:
    """The sidecar's JSON; ValueError for one that is not JSON, however it is malformed."""
    path = sidecar_path(image, mirror)
    try:
        data: dict[str, Any] = json.loads(read_small(path, MAX_SIDECAR_BYTES).decode("utf-8"))
    except RecursionError:  # thousands of nested brackets: another program's file, or a hostile one
        raise ValueError(f"{path}: JSON nested too deeply") from None
    return data


def remove_own_sidecar(image: Path, mirror: Path | None = None) -> bool:
    """Delete the sidecar of a deleted image, but only one that tagger wrote."""
    try:
        generator = read_sidecar(image, mirror).get("generator", "")
    except (OSError, ValueError, AttributeError):
        return False
    if not str(generator).startswith("tagger"):
        return False
    sidecar_path(image, mirror).unlink(missing_ok=True)
    return True
