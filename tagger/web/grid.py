"""The grid page's tiles: copies of one content shown once with their count, month headings
while browsing by date, and the timeline that jumps to a month.

Months are UTC ones of the file's modification time, as `date:` queries read them. A jump is
a page cursor made for the month's edge, so it lands as deep in a million files as on page 1.
"""
from __future__ import annotations

import calendar
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from tagger.index import GridItem, Index
from tagger.web.query import Page, Query, encode_cursor
from tagger.web.tagcounts import index_version

DATED_SORTS = ("newest", "oldest")
TIMELINE_FOLDERS = 32  # timelines kept (the library's and the folders' last looked at)


@dataclass(frozen=True)
class Tile:
    item: GridItem
    copies: int  # files holding this content (1: no copies)
    heading: str | None  # "May 2024" where a new month starts, while browsing by date


@dataclass(frozen=True)
class Month:
    key: str  # YYYY-MM
    name: str  # May 2024
    count: int
    jump: str  # the page cursor that starts at this month

    @property
    def year(self) -> str:
        return self.key[:4]

    @property
    def short(self) -> str:
        return calendar.month_abbr[int(self.key[5:])]


def month_of(mtime_ns: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(mtime_ns / 1e9))


def month_name(key: str) -> str:
    year, month = key.split("-")
    return f"{calendar.month_name[int(month)]} {year}"


def tiles(store: Index, page: Page, query: Query) -> list[Tile]:
    """The page's items, each content once (the first of its copies here), with month headings."""
    copies = store.copies(list({item.sha256 for item in page.items}))
    dated = query.search is None and query.listing.sort in DATED_SORTS
    previous = month_of(int(query.after[0])) if dated and query.after is not None else None
    seen: set[str] = set()
    found: list[Tile] = []
    for item in page.items:
        if item.sha256 in seen:
            continue
        seen.add(item.sha256)
        heading = None
        if dated:
            month = month_of(item.mtime_ns)
            if month != previous:
                heading, previous = month_name(month), month
        found.append(Tile(item, copies.get(item.sha256, 1), heading))
    return found


def _edge_ns(key: str, newest_first: bool) -> int:
    """Where a month starts in the sort's direction: the end of it, newest first; its start, oldest first."""
    year, month = (int(p) for p in key.split("-"))
    if newest_first:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1_000_000_000


class Timeline:
    """Months with files, per folder, kept until a writer commits (tagger.web.tagcounts.index_version)."""

    def __init__(self, index: Path) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._cached: OrderedDict[str | None, tuple[tuple[int, ...], list[tuple[str, int]]]] = OrderedDict()

    def months(self, store: Index, query: Query) -> list[Month]:
        """Newest first whatever the sort; empty while searching (a search is sorted by match)."""
        if query.search is not None or query.listing.sort not in DATED_SORTS:
            return []
        folder = query.listing.folder
        version = index_version(self.index)
        with self._lock:
            hit = self._cached.get(folder)
        if hit is None or hit[0] != version:
            hit = (version, store.months(folder))
            with self._lock:
                self._cached[folder] = hit
                self._cached.move_to_end(folder)
                while len(self._cached) > TIMELINE_FOLDERS:
                    self._cached.popitem(last=False)
        sort = query.listing.sort
        return [
            Month(key, month_name(key), count, encode_cursor(sort, (_edge_ns(key, sort == "newest"), "")))
            for key, count in hit[1]
        ]
