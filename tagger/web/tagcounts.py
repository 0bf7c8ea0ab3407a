"""Tag counts for the grid's tag list, kept in memory until the index changes.

The index keeps its counts up to date itself (store migration 4), so counting is a sum
over a small table; still, every grid page shows them, so they are read again only when
a writer has committed since.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from tagger.index import Index, TagCount


@dataclass(frozen=True)
class Counts:
    images: int  # tagged files
    tags: list[TagCount]  # files per class at the configured min_score, most common first


class TagCounts:
    def __init__(self, index: Path, min_score: float) -> None:
        self.index = index
        self.min_score = min_score
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, ...], Counts] | None = None

    def get(self, store: Index) -> Counts:
        version = self._index_version()
        with self._lock:
            if self._cached is not None and self._cached[0] == version:
                return self._cached[1]
        counts = Counts(store.tagged_count(), store.tag_counts(self.min_score))
        with self._lock:
            self._cached = (version, counts)
        return counts

    def _index_version(self) -> tuple[int, ...]:
        """Changes whenever a writer commits: the index and its write-ahead log, as stat sees them."""
        version: list[int] = []
        for path in (self.index, Path(f"{self.index}-wal")):
            try:
                stat = os.stat(path)
                version += [stat.st_mtime_ns, stat.st_size, stat.st_ino]
            except FileNotFoundError:
                version += [0, 0, 0]
        return tuple(version)
