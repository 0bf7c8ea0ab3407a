"""A grid query as it lives in the URL (bookmarkable, shareable) <-> the index's search engine.

    /?q=tag:cat score:0.5..&tag=咖啡&min_score=0.3&folder=/srv/photos/2024&sort=score&after=CURSOR

One vocabulary: `q` is the query language (tagger.tags.querylang), and each `tag` means what
`tag:` means in `q` (keywords). `tag` may repeat, and one value may hold several terms
separated by commas; every term must match. The model's raw guesses are searched by
`class:` terms; a query of `class:` terms alone is browsed in any sort order. The cursor
is opaque to clients: the sort key and path of the last image shown.
"""
from __future__ import annotations

import base64
import dataclasses
import binascii
import json
import re
import shlex
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from functools import lru_cache

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import BadRequest, HTTPException

from tagger.fileio import json_text, url_text
from tagger.index import SORTS, GridItem, Index, Listing, Sort, SortKey
from tagger.inputs import InputError, score, storable
from tagger.engine.labels import imagenet_classes
from tagger.tags.querylang import QueryError, parse
from tagger.tags.querylang import Query as Parsed
from tagger.tags.rules import Rules
from tagger.tags.searchterms import UnknownTag, resolve_query
from tagger.tags.terms import Search
from tagger.web.files import Library

TERM_SEPARATORS = re.compile(r"[,，、]")
SEARCH_CURSOR = "q"  # the cursors of a q search: (score of the match, path)
CURSOR_VALUES: dict[str, type] = {"newest": int, "oldest": int, "score": float, "name": str, SEARCH_CURSOR: float}
MAX_CURSOR = 8192  # characters: a path of 4096 bytes, base64-encoded, and the sort key
MAX_TERMS = 8


@dataclass(frozen=True)
class Query:
    terms: tuple[str, ...]
    listing: Listing
    min_score_given: bool  # the user chose a minimum score (else the default for the mode applies)
    after: SortKey | None = None
    problems: tuple[str, ...] = field(default=())  # shown on the page; a 400 in the API
    text: str = ""  # q: the query language (tagger.tags.querylang), as typed
    search: Search | None = None  # q and tags resolved: best matches first, paged by a cursor of sort "q"

    def args(self, **changes: Any) -> dict[str, Any]:
        """URL arguments of this query (without the cursor), with `changes` applied; None drops one."""
        args: dict[str, Any] = {"tag": list(self.terms)} if self.terms else {}
        if self.text:
            args["q"] = self.text
        if self.min_score_given:
            args["min_score"] = f"{self.listing.min_score:g}"
        if self.listing.folder is not None:
            args["folder"] = self.listing.folder
        if self.listing.sort != default_sort(self.searching):
            args["sort"] = self.listing.sort
        args.update(changes)
        if isinstance(args.get("folder"), str):
            args["folder"] = url_text(args["folder"])  # Library.folder reads it back, whatever its bytes
        return {k: v for k, v in args.items() if v is not None and v != []}

    @property
    def searching(self) -> bool:
        """Searched by words (tags, a query, raw guesses), rather than browsed."""
        return bool(self.terms or self.text)


def default_sort(searching: bool) -> Sort:
    """Best matches first for a search; newest first for browsing."""
    return "score" if searching else "newest"


def parse_query(
    args: MultiDict[str, str],
    library: Library,
    search_min_score: float,
    rules: Rules,
    has_term: Callable[[str], bool],
) -> Query:
    """Read a query from URL arguments; what cannot be understood becomes a problem, not an exception.

    `q` holds the query language; the other arguments (tag, min_score, folder) narrow it further.
    """
    problems: list[str] = []
    text = " ".join(args.get("q", "").split())
    terms = _terms(args.getlist("tag"))
    if len(terms) > MAX_TERMS:
        problems.append(f"at most {MAX_TERMS} tags at once")
    parsed = Parsed()
    search = None
    if text or terms:
        try:
            words = [text, *(f"tag:{shlex.quote(t)}" for t in terms)]
            parsed = parse(" ".join(w for w in words if w))
            search = resolve_query(rules, parsed, has_term)
        except (QueryError, UnknownTag) as exc:
            problems.append(str(exc))
    # class: terms alone browse the raw guesses by the listing's sorts (best first by default)
    classes_only = bool(parsed.classes) and parsed == Parsed(classes=parsed.classes)
    searching = bool(text or terms)
    raw_score = args.get("min_score", "")
    min_score, score_given = (search_min_score if classes_only else 0.0), False
    if raw_score.strip():
        try:
            min_score, score_given = score("min_score", raw_score), True
        except InputError as exc:
            problems.append(str(exc))
    sort = _sort(args.get("sort", "").strip(), searching, problems)
    folder = None
    if args.get("folder", "").strip():
        try:
            folder = library.folder(args["folder"].strip())
        except HTTPException as exc:
            problems.append(str(exc.description))
    groups = search.classes if search is not None and classes_only else ()
    if classes_only:
        search = None
    elif search is not None:
        search = dataclasses.replace(
            search,
            folders=search.folders + ((folder,) if folder else ()),
            score_min=max(search.score_min, min_score) if score_given else search.score_min,
        )
    after = None
    if args.get("after"):
        try:
            after = decode_cursor(args["after"], SEARCH_CURSOR if search is not None else sort)
        except BadRequest as exc:
            problems.append(str(exc.description))
    listing = Listing(groups, min_score, folder, sort)
    return Query(tuple(terms), listing, score_given, after, tuple(problems), text, search)


def _sort(given: str, searching: bool, problems: list[str]) -> Sort:
    for sort in SORTS:
        if given == sort:
            return sort
    if given:
        problems.append(f"sort must be one of {', '.join(SORTS)}, not {given[:40]!r}")
    return default_sort(searching)


def _terms(values: list[str]) -> list[str]:
    terms: list[str] = []
    for value in values:
        for term in TERM_SEPARATORS.split(value):
            term = " ".join(term.split())
            if term and term not in terms:
                terms.append(term)
    return terms


def encode_cursor(sort: str, key: SortKey) -> str:
    text = json_text([sort, *key], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> SortKey:
    """The key a page cursor holds, checked to be one this viewer could have made for `sort`."""
    made_here = BadRequest("the page cursor ('after') is not one this viewer made")
    if len(cursor) > MAX_CURSOR:
        raise made_here
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, value, path = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, RecursionError):
        raise made_here from None
    if cursor_sort != sort:
        if isinstance(cursor_sort, str) and cursor_sort in CURSOR_VALUES:
            raise BadRequest(f"the page cursor ('after') belongs to sort={cursor_sort!r}, not sort={sort!r}")
        raise made_here
    expected = CURSOR_VALUES.get(sort)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # a score of exactly 0 or 1
    if expected is None or not isinstance(path, str) or type(value) is not expected:
        raise made_here
    if not isinstance(value, (str, int, float)) or not (isinstance(value, str) or storable(value)) or "\x00" in path:
        raise made_here
    return value, path


@dataclass(frozen=True)
class Page:
    items: list[GridItem]
    next: str | None  # the cursor of the following page; None on the last one


def fetch_page(store: Index, query: Query, limit: int) -> Page:
    """One page of the query, and whether another follows (one row more is asked for to know)."""
    if query.problems:
        return Page([], None)
    if query.search is not None:
        items = store.search_items(query.search, limit + 1, query.after)
    else:
        items = store.browse(query.listing, limit + 1, query.after)
    more = len(items) > limit
    items = items[:limit]
    sort = SEARCH_CURSOR if query.search is not None else query.listing.sort
    return Page(items, encode_cursor(sort, items[-1].key) if more else None)


@lru_cache(maxsize=1)
def _shared_labels() -> frozenset[str]:
    labels = Counter(c.label.casefold() for c in imagenet_classes())
    return frozenset(label for label, n in labels.items() if n > 1)


def term_for(class_id: int) -> str:
    """The search term naming exactly this class: its label, or its WordNet id where two classes share the label."""
    c = imagenet_classes()[class_id]
    return c.wnid if c.label.casefold() in _shared_labels() else c.label
