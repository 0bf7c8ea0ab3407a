"""Keywords: the rules applied to a content's raw tags, then the user's corrections.

The same steps run at a scan, at `tagger retag` and at a correction (CLI or viewer), so a
keyword means the same whichever wrote it. Pure functions: no index, no files.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from tagger.engine.labels import Tag
from tagger.tags.rules import Rules
from tagger.tags.terms import ClassKeyword, Correction, KeywordRow


def keyword_rows(
    rules: Rules,
    tags: Sequence[Tag],
    min_score: float,
    corrections: Sequence[Correction],
    learned: Sequence[tuple[str, float]] = (),
) -> list[KeywordRow]:
    """Rules and learned tags (tagger.vectors.learned), then corrections: a removed keyword is dropped; an
    added one is the user's, at 1.0. A learned tag takes the place of a rule's keyword of its name.

    A learned tag is NAME under learned/ unless a `learned:` rule renames, files or drops it;
    learned tags a rule gives one name merge, with the best score, as classes do. A removal of
    the tag's own NAME holds after a rename (it was made when the keyword was NAME).
    """
    removed = {c.keyword.casefold() for c in corrections if c.action == "remove"}
    added = [c.keyword for c in corrections if c.action == "add"]
    best: dict[str, KeywordRow] = {}
    for tag, score in learned:
        d = rules.learned_display(tag)
        if d is not None and tag.casefold() not in removed and (d.name not in best or score > best[d.name].score):
            best[d.name] = KeywordRow(d.name, d.name_zh, d.path, d.path_zh, score, "model")
    taught = list(best.values())
    names = {r.keyword.casefold() for r in taught}
    rows = taught + [
        k for k in rules.apply(tags, min_score) if k.keyword.casefold() not in names
    ]
    taken = removed | {word.casefold() for word in added}
    kept = [r for r in rows if r.keyword.casefold() not in taken and r.keyword_zh.casefold() not in taken]
    users = [KeywordRow(word, word, word, word, 1.0, "user") for word in added if word.casefold() not in removed]
    return users + kept


def class_keywords(rules: Rules, min_score: float) -> list[ClassKeyword]:
    """The rules as a table: per class, its keyword and the least score at which it counts."""
    return [
        ClassKeyword(class_id, threshold, d.name, d.name_zh, d.path, d.path_zh)
        for class_id, (d, threshold) in enumerate(rules.outcomes(min_score))
    ]


def changed_bands(old: Sequence[ClassKeyword], new: Sequence[ClassKeyword]) -> list[tuple[int, float, float]]:
    """(class, low, high): the raw scores of a class whose keyword differs between two tables.

    Same keyword, other threshold: the scores between the two thresholds. Another keyword,
    or a drop: every score from the lower threshold up. Scores below both never counted.
    A content is re-tagged only when one of its raw tags falls in a band.
    """
    bands = []
    for was, now in zip(old, new):
        low, high = sorted((was.threshold, now.threshold))
        if was == now or low > 1.0:
            continue
        renamed = (was.keyword, was.keyword_zh, was.path, was.path_zh) != (
            now.keyword, now.keyword_zh, now.path, now.path_zh
        )
        bands.append((now.class_id, low, math.inf if renamed else high))
    return bands


def machine_keywords(rows: Sequence[KeywordRow]) -> list[str]:
    """What tagger writes under its XMP prefix: each model keyword with its categories, in English and Chinese.

    The user's own keywords are not machine tags: they go into XMP at the top level.
    """
    return list(dict.fromkeys(p for r in rows if r.source == "model" for p in (r.path, r.path_zh)))
