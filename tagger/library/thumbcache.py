"""The viewer's cache of thumbnails, tiles and previews, kept in step with the library.

The viewer makes them (tagger.web.thumbs) under `<index>.thumbs/`, named by content; the
writer that forgets a library's last file of a content removes that content's pictures, so
that a deleted photo leaves no copy of itself behind in tagger's folders.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def thumbnail_folder(index: Path) -> Path:
    return Path(f"{index}.thumbs")


def remove_thumbnails(index: Path, contents: Iterable[str]) -> int:
    """Every cached picture of these contents (sha256s); how many files went. Each shard folder
    is listed once, whatever the number of contents in it."""
    folder = thumbnail_folder(index)
    by_shard: dict[str, set[str]] = defaultdict(set)
    for sha256 in contents:
        by_shard[sha256[:2]].add(sha256)
    removed = 0
    for shard, shas in by_shard.items():
        try:
            names = os.listdir(folder / shard)
        except OSError:
            continue  # no picture of these was ever made
        for name in names:
            if name.split("-", 1)[0] in shas:
                try:
                    os.unlink(folder / shard / name)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("%s: cached thumbnail not removed: %s", folder / shard / name, exc.strerror or exc)
    return removed
