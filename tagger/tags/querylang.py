"""One query language for the CLI, the viewer and the API, in the style of beets.

    tag:dog score:0.6.. ^tag:cat folder:2024 added:-1w.. 猫

- A bare word or `tag:WORD` is a tag: an English or Chinese label, a keyword from the
  rules (`cat`, `猫`, `animal`), an alias, a WordNet id or a class number. Quote words
  with spaces: `tag:"sports car"`. Several tags must all match.
- `class:WORD` is one of the model's raw guesses (an ImageNet class, by English or Chinese
  label, WordNet id or number), whatever the rules and corrections made of it:
  `class:tabby`, `class:n02123045`, `class:281`. It is how the image page's raw guesses link.
- `^` before a tag, folder or type term negates it: `^tag:cat`, `^猫`, `^folder:tmp`, `^type:raw`.
- `score:LO..HI` bounds the score of the matching tags (`score:0.6..`, `score:..0.3`,
  `score:0.5` means at least 0.5).
- `folder:NAME` keeps files with a folder of that name in their path (`folder:2024`);
  an absolute path keeps files under it (`folder:/srv/photos/trips`).
- `type:raw` keeps camera RAW files, `type:video` video clips, `type:photo` every other image;
  `^type:raw` leaves RAWs out.
- `duration:RANGE` keeps clips by length in seconds (or with `s`, `m`, `h`): `duration:>60`,
  `duration:<30`, `duration:1m..5m`, `duration:60` (at least 60 s). Still images have no length.
- `sha:HASH` keeps the files holding that content (its sha256 as the API and sidecars give it, or
  the first 8 or more of its characters); several `sha:` terms keep any of them. The viewer's
  "Open as a search" writes one per selected image.
- `added:RANGE` (when tagger first saw the file) and `date:RANGE` (the file's own
  modification time) take `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or a relative `-3d`, `-2w`,
  `-6m`, `-1y`, alone or as `FROM..TO` with either side optional: `added:-1w..`,
  `date:2023..2024-06`. Days, months and years are UTC ones.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from tagger.errors import TaggerError
from tagger.inputs import InputError, score

FIELDS = ("tag", "class", "score", "folder", "type", "added", "date", "duration", "sha")
TYPES = ("photo", "raw", "video")  # what `type:` takes: a camera RAW file, a clip, or any other image
_LENGTH = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,3})?)([smh]?)")
_LENGTH_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_CONTENT = re.compile(r"s?[0-9a-f]{8,64}")  # a sha256, or the sampled hash of a large clip ("s...")
_RELATIVE = re.compile(r"-([0-9]{1,7})([dwmy])")
_ABSOLUTE = re.compile(r"([0-9]{4})(?:-([0-9]{1,2})(?:-([0-9]{1,2}))?)?")
_DATE_HINT = "dates are YYYY, YYYY-MM, YYYY-MM-DD or relative like -3d, -2w, -6m, -1y"
_UNIT_DAYS = {"d": 1, "w": 7, "m": 30, "y": 365}
# Each term is a condition of the index's WHERE clause: a thousand of them went past SQLite's
# expression depth (1000) and failed as a server error, where a person needs a reason.
MAX_TERMS = 100


class QueryError(TaggerError):
    """A query that cannot be understood; the message says which part and why."""


@dataclass(frozen=True)
class TimeRange:
    """Seconds since the epoch, either end open."""

    start: float | None = None
    end: float | None = None

    def contains(self, when: float) -> bool:
        return (self.start is None or when >= self.start) and (self.end is None or when < self.end)


@dataclass(frozen=True)
class Query:
    tags: tuple[str, ...] = ()
    not_tags: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()  # class: words, each naming raw guesses
    score_min: float | None = None
    score_max: float | None = None
    folders: tuple[str, ...] = ()
    not_folders: tuple[str, ...] = ()
    types: tuple[str, ...] = ()  # TYPES; several: a file of any of them
    not_types: tuple[str, ...] = ()
    added: TimeRange | None = None
    date: TimeRange | None = None
    text: str = field(default="", compare=False)
    duration_min: float | None = None  # seconds, of a clip
    duration_max: float | None = None
    contents: tuple[str, ...] = ()  # sha: prefixes; several: a file holding any of them

    @property
    def empty(self) -> bool:
        return self == Query()


def parse(text: str, now: datetime | None = None) -> Query:
    """Parse a query string; raises QueryError naming the bad term."""
    now = now or datetime.now(timezone.utc)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise QueryError(f"cannot read query {text!r}: {exc}") from None
    if len(words) > MAX_TERMS:
        raise QueryError(f"too many terms in the query ({len(words)}); at most {MAX_TERMS}")
    tags: list[str] = []
    not_tags: list[str] = []
    classes: list[str] = []
    folders: list[str] = []
    not_folders: list[str] = []
    types: list[str] = []
    not_types: list[str] = []
    contents: list[str] = []
    score_min = score_max = None
    duration_min = duration_max = None
    added = date = None
    for word in words:
        negated = word.startswith("^")
        body = word[1:] if negated else word
        name, sep, value = body.partition(":")
        if not sep or name not in FIELDS:
            name, value = "tag", body  # a bare word, or a label that itself holds a colon
        if not value:
            raise QueryError(f"empty value in {word!r} (e.g. {name}:...)")
        if name == "tag":
            (not_tags if negated else tags).append(value)
        elif name == "folder":
            (not_folders if negated else folders).append(value)
        elif name == "type":
            kind = value.casefold()
            if kind not in TYPES:
                raise QueryError(f"{word!r}: type: takes {' or '.join(TYPES)}")
            (not_types if negated else types).append(kind)
        elif name == "class" and not negated:
            classes.append(value)
        elif name == "sha" and not negated:
            if not _CONTENT.fullmatch(value.casefold()):
                raise QueryError(f"{word!r}: sha: takes a content hash (8 to 64 hexadecimal characters)")
            contents.append(value.casefold())
        elif negated:
            raise QueryError(f"{word!r}: only tag:, folder: and type: terms can be negated with ^")
        elif name == "score":
            score_min, score_max = _score_range(value, word)
        elif name == "duration":
            duration_min, duration_max = _length_range(value, word)
        else:
            when = _time_range(value, word, now)
            if name == "added":
                added = when
            else:
                date = when
    return Query(
        tuple(tags), tuple(not_tags), tuple(classes), score_min, score_max, tuple(folders), tuple(not_folders),
        tuple(dict.fromkeys(types)), tuple(dict.fromkeys(not_types)), added, date, text, duration_min, duration_max,
        tuple(dict.fromkeys(contents)),
    )


def _length_range(value: str, word: str) -> tuple[float | None, float | None]:
    """`>60`, `<30`, `60` (at least), `1m..5m`, `..90`: seconds, either end open."""
    if value[:1] in "<>":
        low, high = (value[1:], "") if value[0] == ">" else ("", value[1:])
    else:
        low, sep, high = value.partition("..")
        high = high if sep else ""
    if not low and not high:
        raise QueryError(f"{word!r}: duration: takes seconds like >60, <30, 60..120 or 1m..5m")
    return _length(low, word), _length(high, word)


def _length(text: str, word: str) -> float | None:
    if not text:
        return None
    found = _LENGTH.fullmatch(text.strip().casefold())
    if found is None:
        raise QueryError(f"{word!r}: {text!r} is not a length (seconds, or with s, m, h: 90, 1.5m, 2h)")
    return float(found.group(1)) * _LENGTH_UNITS[found.group(2)]


def _score_range(value: str, word: str) -> tuple[float | None, float | None]:
    low, sep, high = value.partition("..")
    try:
        lo = score(f"{word!r}: a score", low) if low else None
        hi = score(f"{word!r}: a score", high) if high else None
    except InputError as exc:
        raise QueryError(str(exc)) from None
    return lo, (hi if sep else None)


def _time_range(value: str, word: str, now: datetime) -> TimeRange:
    low, sep, high = value.partition("..")
    if not sep:  # a single date means that whole day, month or year
        start, end = _instant(low, word, now, end=False), _instant(low, word, now, end=True)
        return TimeRange(start, end)
    return TimeRange(
        _instant(low, word, now, end=False) if low else None,
        _instant(high, word, now, end=True) if high else None,
    )


def _instant(text: str, word: str, now: datetime, *, end: bool) -> float:
    """Start (or, with end, the end) of a date written as YYYY[-MM[-DD]] or -N[dwmy] (ASCII digits only)."""
    relative = _RELATIVE.fullmatch(text)
    absolute = _ABSOLUTE.fullmatch(text)
    try:
        if relative:
            days = int(relative.group(1)) * _UNIT_DAYS[relative.group(2)]
            return (now - timedelta(days=days)).timestamp()
        if absolute is None:
            raise QueryError(f"{word!r}: {_DATE_HINT}")
        year_text, month_text, day_text = absolute.groups()
        year = int(year_text)
        month, day = int(month_text or 0), int(day_text or 0)
        if not month_text:
            start, following = datetime(year, 1, 1, tzinfo=timezone.utc), datetime(year + 1, 1, 1, tzinfo=timezone.utc)
        elif not day_text:
            start = datetime(year, month, 1, tzinfo=timezone.utc)
            following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
        else:
            start = datetime(year, month, day, tzinfo=timezone.utc)
            following = start + timedelta(days=1)
    except (ValueError, OverflowError):
        raise QueryError(f"{word!r}: no such date, or one outside the years 1 to 9998 ({_DATE_HINT})") from None
    return (following if end else start).timestamp()
