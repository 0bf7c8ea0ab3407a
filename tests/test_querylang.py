"""The query language: every term kind, negation, ranges, and clear refusals."""
from __future__ import annotations

from pathlib import Path
from datetime import datetime, timezone

import pytest

from tagger.tags.querylang import Query, QueryError, TimeRange, parse

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def test_the_documented_example() -> None:
    q = parse("tag:dog score:0.6.. ^tag:cat folder:2024 added:-1w.. 猫", NOW)
    assert q.tags == ("dog", "猫") and q.not_tags == ("cat",)
    assert (q.score_min, q.score_max) == (0.6, None)
    assert q.folders == ("2024",)
    assert q.added == TimeRange(ts(2026, 11, 20, 12), None)
    assert q.date is None


def test_quoted_words_and_bare_words() -> None:
    q = parse('tag:"sports car" "tiger cat" espresso', NOW)
    assert q.tags == ("sports car", "tiger cat", "espresso")


def test_a_label_with_a_colon_is_a_tag() -> None:
    assert parse("foo:bar", NOW).tags == ("foo:bar",)


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("score:0.6..", 0.6, None), ("score:..0.3", None, 0.3), ("score:0.2..0.8", 0.2, 0.8), ("score:0.5", 0.5, None)],
)
def test_score_ranges(text: str, low: float | None, high: float | None) -> None:
    q = parse(text, NOW)
    assert (q.score_min, q.score_max) == (low, high)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("date:2024", ts(2024, 1, 1), ts(2025, 1, 1)),
        ("date:2024-12", ts(2024, 12, 1), ts(2025, 1, 1)),
        ("date:2024-02-28", ts(2024, 2, 28), ts(2024, 2, 29)),
        ("date:2023..2024-06", ts(2023, 1, 1), ts(2024, 7, 1)),
        ("added:..2020", None, ts(2021, 1, 1)),
        ("added:-3d..", ts(2026, 11, 24, 12), None),
        ("added:-1y..-6m", ts(2025, 11, 27, 12), ts(2026, 5, 31, 12)),
    ],
)
def test_time_ranges(text: str, start: float | None, end: float | None) -> None:
    q = parse(text, NOW)
    assert (q.added or q.date) == TimeRange(start, end)


def test_time_range_contains_is_half_open() -> None:
    r = TimeRange(ts(2024, 1, 1), ts(2025, 1, 1))
    assert r.contains(ts(2024, 6, 1)) and r.contains(ts(2024, 1, 1)) and not r.contains(ts(2025, 1, 1))


def test_negated_folder() -> None:
    q = parse("^folder:tmp folder:/srv/photos", NOW)
    assert q.not_folders == ("tmp",) and q.folders == ("/srv/photos",)


def test_type_terms() -> None:
    q = parse("type:RAW ^type:photo type:raw", NOW)
    assert (q.types, q.not_types) == (("raw",), ("photo",))


def test_class_terms_name_raw_guesses() -> None:
    q = parse('class:tabby class:"tiger cat" cat', NOW)
    assert q.classes == ("tabby", "tiger cat") and q.tags == ("cat",)
    with pytest.raises(QueryError, match="negated"):
        parse("^class:tabby", NOW)


def test_empty_query() -> None:
    assert parse("", NOW).empty and parse("   ", NOW) == Query()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("score:high", ["score:high", "number from 0 to 1"]),
        ("score:1.5..", ["from 0 to 1"]),
        ("added:yesterday", ["added:yesterday", "YYYY-MM-DD", "-3d"]),
        ("date:2024-13", ["date:2024-13"]),
        ("^score:0.5", ["only tag:, folder: and type: terms"]),
        ("type:movie", ["type:movie", "photo or raw or video"]),
        ("duration:abc", ["duration:abc", "not a length"]),
        ("duration:>", ["duration:>", "takes seconds"]),
        ("^duration:5", ["only tag:, folder: and type:"]),
        ("tag:", ["empty value"]),
        ('tag:"unclosed', ["cannot read query"]),
        ("added:-99999y..", ["added:-99999y..", "1 to 9998"]),  # past year 1: no OverflowError
        ("date:9999-12", ["date:9999-12"]),
        ("added:２０２４", ["YYYY-MM-DD"]),  # only ASCII digits
        ("date:2024-02-30", ["no such date"]),
        ("score:nan", ["number from 0 to 1"]),
        ("score:١", ["number from 0 to 1"]),
        ("score:1e-1", ["number from 0 to 1"]),
        (" ".join(f"folder:f{i}" for i in range(101)), ["too many terms in the query (101); at most 100"]),
    ],
)
def test_refusals_name_the_term(text: str, words: list[str]) -> None:
    with pytest.raises(QueryError) as info:
        parse(text, NOW)
    for word in words:
        assert word in str(info.value)


def test_a_hundred_terms_are_read() -> None:
    assert len(parse(" ".join(f"folder:f{i}" for i in range(100)), NOW).folders) == 100


def test_dates_are_utc_days_as_the_docs_say() -> None:
    from datetime import datetime, timezone

    day = parse("date:2024-05-01").date
    assert day is not None and day.start == datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp()
    assert day.end == datetime(2024, 5, 2, tzinfo=timezone.utc).timestamp()
    guide = (Path(__file__).resolve().parent.parent / "docs" / "guides" / "rules-and-queries.md").read_text()
    assert "UTC ones" in guide


def test_sha_terms_keep_any_of_the_contents_named() -> None:
    query = parse("sha:0123456789ABCDEF sha:sabcdef0123 tag:cat")
    assert query.contents == ("0123456789abcdef", "sabcdef0123") and query.tags == ("cat",)
    for bad in ("sha:1234", "sha:xyz12345678", "^sha:0123456789"):
        with pytest.raises(QueryError):
            parse(bad)
