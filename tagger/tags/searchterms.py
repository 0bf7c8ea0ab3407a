"""A parsed query (tagger.tags.querylang) -> a Search (tagger.tags.terms): each word turned into the stored
search words that find it.

The one place where a word of the CLI's `tagger query`, the viewer's search box, its `tag=`
links and the API becomes keyword terms, so that all of them find the same images.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TypeVar

from tagger.errors import TaggerError
from tagger.fileio import IMAGE_EXTENSIONS, RAW_EXTENSIONS, VIDEO_EXTENSIONS, utc_text
from tagger.engine.labels import Tag, resolve_tag, suggest_labels
from tagger.tags.querylang import Query, TimeRange
from tagger.tags.rules import Rules
from tagger.tags.terms import Search

_V = TypeVar("_V")


class UnknownTag(TaggerError):
    """A search word that no keyword, label or alias means."""


def search_terms(rules: Rules, word: str) -> tuple[str, ...]:
    """The stored search words (keyword_terms.term) that a query word means.

    The word itself (a keyword, a category or a user's own keyword), the keywords of
    every class it names: as an alias or label in the rules, a WordNet id or a class number,
    and those of the learned tags it names: by their own name or an alias of a `learned:` rule.
    """
    folded = word.strip().casefold()
    fake = [Tag(c, "", "", "", 1.0) for c in sorted(_classes(rules, word))]
    names = {
        k.keyword.casefold()
        for k in rules.apply(fake, 0.0)
        # a keyword the word names, or one under it, is found by the word itself: one index range, not hundreds
        if folded not in {w.casefold() for w in (k.keyword, k.keyword_zh, *k.path.split("/"), *k.path_zh.split("/"))}
    }
    learned = {name.casefold() for name in _learned(rules).get(folded, ())}
    return tuple(sorted({folded} | names | learned))


def _classes(rules: Rules, word: str) -> set[int]:
    """The classes a word names through the rules (keyword, category, alias) or as a label, id or number."""
    return set(_aliases(rules).get(word.strip().casefold(), ())) | {c.class_id for c in resolve_tag(word)}


def resolve_query(rules: Rules, query: Query, has_term: Callable[[str], bool]) -> Search:
    """A parsed query with each tag word turned into its search terms; UnknownTag when a word means nothing.

    `has_term` tells whether a word is a stored term (a user's own keyword, say). A `class:`
    word names raw guesses (ImageNet classes) instead of keywords.
    """

    def terms(word: str) -> tuple[str, ...]:
        found = search_terms(rules, word)
        folded = word.strip().casefold()
        if not _classes(rules, word) and folded not in _learned(rules) and not has_term(folded):
            close = suggest_labels(word)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise UnknownTag(f"no keyword, label or alias matches {word!r}{hint}")
        return found

    return Search(
        groups=tuple(map(terms, query.tags)),
        not_groups=tuple(map(terms, query.not_tags)),
        classes=tuple(map(_named_classes, query.classes)),
        score_min=0.0 if query.score_min is None else query.score_min,
        score_max=1.0 if query.score_max is None else query.score_max,
        folders=query.folders,
        not_folders=query.not_folders,
        suffixes=_suffixes(query.types),
        not_suffixes=_suffixes(query.not_types),
        added=_span(query.added, utc_text),
        mtime_ns=_span(query.date, lambda t: int(t * 1e9)),
        duration=(query.duration_min, query.duration_max),
        contents=query.contents,
    )


def _suffixes(types: Sequence[str]) -> tuple[str, ...]:
    """The file-name endings of `type:` terms (tagger.fileio decides what a RAW is)."""
    kinds = {"raw": RAW_EXTENSIONS, "video": VIDEO_EXTENSIONS, "photo": IMAGE_EXTENSIONS - RAW_EXTENSIONS - VIDEO_EXTENSIONS}
    return tuple(sorted({suffix for kind in types for suffix in kinds[kind]}))


def _named_classes(word: str) -> tuple[int, ...]:
    """The ImageNet classes a `class:` word names: label (English or Chinese), WordNet id or number."""
    found = tuple(sorted(c.class_id for c in resolve_tag(word)))
    if not found:
        close = suggest_labels(word)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise UnknownTag(f"no ImageNet class matches {word!r}{hint}")
    return found


def _span(when: TimeRange | None, convert: Callable[[float], _V]) -> tuple[_V | None, _V | None]:
    if when is None:
        return None, None
    return (
        None if when.start is None else convert(when.start),
        None if when.end is None else convert(when.end),
    )


@lru_cache(maxsize=4)
def _aliases(rules: Rules) -> dict[str, list[int]]:
    """rules.aliases(), built once per Rules object (a few thousand words)."""
    return rules.aliases()


@lru_cache(maxsize=4)
def _learned(rules: Rules) -> dict[str, list[str]]:
    """rules.learned_aliases(), built once per Rules object."""
    return rules.learned_aliases()
