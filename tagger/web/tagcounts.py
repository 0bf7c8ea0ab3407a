"""Tag counts for the grid's tag list and the tag browser, kept in memory until the index changes.

The index keeps its class counts up to date itself (store migration 4), so counting is a sum
over a small table; still, every grid page shows them, so they are read again only when
a writer has committed since. The tag browser's counts (keywords, their categories, learned
tags) are three grouped queries (tagger.index.tagbrowser), also read again only after a commit.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tagger.index import Index, TagCount
from tagger.index.tagbrowser import KeywordCount, LearnedCount, TagBrowserRows, TermCount
from tagger.tags.terms import keyword_terms


@dataclass(frozen=True)
class Counts:
    images: int  # tagged files
    tags: list[TagCount]  # files per class at the configured min_score, most common first


@dataclass
class Category:
    """A place in the keyword hierarchy: a category (with keywords below it), a keyword, or both."""

    name: str
    name_zh: str
    path: str  # animal/dog
    files: int = 0
    cover: str | None = None
    keyword: KeywordCount | None = None  # the keyword whose place this is, if any
    children: list[Category] = field(default_factory=list)

    def words(self) -> str:
        """What the tag browser's filter matches: the names of this place and every one above it."""
        return " ".join(dict.fromkeys((self.path, self.name_zh)))


@dataclass(frozen=True)
class Browser:
    tree: list[Category]  # the model's keywords (learned tags' too) by category, most files first
    own: list[KeywordCount]  # the user's own keywords
    learned: list[LearnedCount]  # every learned tag, by name, with or without matches
    keywords: list[KeywordCount]  # every keyword, most files first

    @property
    def places(self) -> int:
        """How many keywords and categories the tree holds."""
        def count(nodes: Sequence[Category]) -> int:
            return sum(1 + count(n.children) for n in nodes)
        return count(self.tree)


def keyword_tree(keywords: Sequence[KeywordCount], categories: dict[str, TermCount]) -> list[Category]:
    """The model's keywords placed by their paths. A keyword's own count is its files; a category's
    is what searching its name finds (`categories`, by casefolded name): its keywords, each file once."""
    top: dict[str, Category] = {}
    below: dict[str, dict[str, Category]] = {}
    for k in keywords:
        if k.source != "model":
            continue
        parts, parts_zh = k.path.split("/"), k.path_zh.split("/")
        if len(parts_zh) != len(parts):
            parts_zh = parts
        level, node = top, None
        for depth, (name, name_zh) in enumerate(zip(parts, parts_zh)):
            path = "/".join(parts[: depth + 1])
            node = level.get(name)
            if node is None:
                node = level[name] = Category(name, name_zh, path)
            level = below.setdefault(path, {})
        assert node is not None
        node.keyword = k
    def finish(level: dict[str, Category]) -> list[Category]:
        nodes = list(level.values())
        for node in nodes:
            node.children = finish(below.get(node.path, {}))
            term = categories.get(node.name.strip().casefold())
            if node.children and term is not None:
                node.files, node.cover = term.files, term.cover
            elif node.keyword is not None:
                node.files, node.cover = node.keyword.files, node.keyword.cover
        return sorted(nodes, key=lambda n: (-n.files, n.name.casefold()))
    return finish(top)


def category_terms(keywords: Sequence[KeywordCount]) -> list[str]:
    """The search words of every category above a model keyword (casefolded, as stored)."""
    terms: set[str] = set()
    for k in keywords:
        if k.source == "model" and "/" in k.path:
            terms |= keyword_terms(k.path.rsplit("/", 1)[0], "")
    return sorted(terms)


class TagCounts:
    def __init__(self, index: Path, min_score: float) -> None:
        self.index = index
        self.min_score = min_score
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, ...], Counts] | None = None
        self._browser: tuple[tuple[int, ...], Browser] | None = None

    def get(self, store: Index) -> Counts:
        version = index_version(self.index)
        with self._lock:
            if self._cached is not None and self._cached[0] == version:
                return self._cached[1]
        counts = Counts(store.tagged_count(), store.tag_counts(self.min_score))
        with self._lock:
            self._cached = (version, counts)
        return counts

    def browser(self, store: Index) -> Browser:
        """The tag browser's lists: three grouped queries, read again only after a commit."""
        version = index_version(self.index)
        with self._lock:
            if self._browser is not None and self._browser[0] == version:
                return self._browser[1]
        rows = TagBrowserRows(store.conn)
        with store.vectors.snapshot():
            keywords = rows.keyword_counts()
            categories = rows.term_counts(category_terms(keywords))
            learned = rows.learned_counts()
        browser = Browser(
            keyword_tree(keywords, categories), [k for k in keywords if k.source == "user"], learned, keywords
        )
        with self._lock:
            self._browser = (version, browser)
        return browser


def index_version(index: Path) -> tuple[int, ...]:
    """Changes whenever a writer commits: the index and its write-ahead log, as stat sees them."""
    version: list[int] = []
    for path in (index, Path(f"{index}-wal")):
        try:
            stat = os.stat(path)
            version += [stat.st_mtime_ns, stat.st_size, stat.st_ino]
        except FileNotFoundError:
            version += [0, 0, 0]
    return tuple(version)
