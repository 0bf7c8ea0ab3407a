"""Keywords, corrections and searches as values: what the keyword rules, the query language
and the index hand each other.

They live apart from the index (tagger.index) so that the rules and the query language can
be read, and tested, without a database.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Source = Literal["model", "user"]  # who made a keyword: the rules from the model's guesses, or the user
Action = Literal["add", "remove"]  # a correction


@dataclass(frozen=True)
class KeywordRow:
    """A keyword of one content: what the rules make of its raw tags, as stored and written into sidecars.

    The one shape of a keyword from the rules to the index, the sidecars and the viewer.
    """

    keyword: str
    keyword_zh: str
    path: str  # with its categories: animal/cat
    path_zh: str
    score: float  # the best score among the raw tags (or learned tags) that map to it
    source: Source
    # The raw classes that made it, in the order of the raw tags: known where the rules just ran
    # (an explanation's "Why?"), never stored, so not part of what makes two rows equal.
    class_ids: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def terms(self) -> set[str]:
        return keyword_terms(self.path, self.path_zh)

    def as_dict(self) -> dict[str, object]:
        return {
            "keyword": self.keyword,
            "keyword_zh": self.keyword_zh,
            "path": self.path,
            "path_zh": self.path_zh,
            "score": round(self.score, 6),
            "source": self.source,
        }


def keyword_terms(path: str, path_zh: str) -> set[str]:
    """The search words that find a keyword: itself and each category, English and Chinese."""
    return {w.strip().casefold() for w in (*path.split("/"), *path_zh.split("/")) if w.strip()}


@dataclass(frozen=True)
class ClassKeyword:
    """What the rules make of one class: its keyword, and the least score at which it counts."""

    class_id: int
    threshold: float  # inf: dropped, never a keyword
    keyword: str
    keyword_zh: str
    path: str
    path_zh: str


@dataclass(frozen=True)
class Correction:
    keyword: str
    action: Action


@dataclass(frozen=True)
class Search:
    """A parsed query (tagger.tags.querylang) with its words resolved to stored search terms."""

    groups: tuple[tuple[str, ...], ...] = ()  # every group must match (a word -> its terms)
    not_groups: tuple[tuple[str, ...], ...] = ()  # none may match
    classes: tuple[tuple[int, ...], ...] = ()  # raw guesses (class: terms): each group must be among them
    score_min: float = 0.0  # of the matching keywords (of any keyword, with no groups)
    score_max: float = 1.0
    folders: tuple[str, ...] = ()  # a folder's name anywhere in the path, or an absolute folder
    not_folders: tuple[str, ...] = ()
    # type: terms as file-name endings (lower case, with the dot): a file must end with one of `suffixes`
    # (when given) and with none of `not_suffixes`.
    suffixes: tuple[str, ...] = ()
    not_suffixes: tuple[str, ...] = ()
    added: tuple[str | None, str | None] = (None, None)  # [from, to) of files.added_at
    mtime_ns: tuple[int | None, int | None] = (None, None)  # [from, to) of files.mtime_ns
    duration: tuple[float | None, float | None] = (None, None)  # [from, to] of a clip's seconds
    contents: tuple[str, ...] = ()  # sha256 prefixes: a file holding any of them


# A keyword's place is its categories joined by "/" (and by "|" in XMP's hierarchical subjects): a
# name holding either would split into categories that are not there (auto|learned|cats|dogs).
CATEGORY_SEPARATORS = "/|"


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a tag (a learned tag, a rule's rename), or None: one rule for both."""
    cleaned = name.strip()
    if not cleaned or any(c in cleaned for c in "\n\r\t") or len(cleaned) > 100:
        return "give a word or a few (at most 100 characters)"
    if any(c in cleaned for c in CATEGORY_SEPARATORS):
        return "'/' and '|' separate a keyword's categories; put categories in `parents:` of a rule instead"
    return None
