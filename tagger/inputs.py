"""Strict parsers, one per kind of value a person types: whole numbers and scores.

Python's own conversions are generous: `str.isdigit()` takes '²', `int()` takes ' 1_0 ' and
Arabic-Indic digits, `float()` takes 'nan', '1e3' and 'infinity'. What is accepted here and
fails later is a crash, so each kind of value is read in one place, by what the rest of
tagger can use, and a refusal names the parameter. Dates live with the query language
(tagger.tags.querylang), cursors with the viewer's pages (tagger.web.query); both check their
numbers here.
"""
from __future__ import annotations

import math
import re

from tagger.errors import TaggerError

SQLITE_INTEGERS = (-(2**63), 2**63 - 1)  # what SQLite can bind; past it sqlite3 raises OverflowError
_WHOLE = re.compile(r"[0-9]{1,18}")
_SCORE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,17})?|\.[0-9]{1,17}")


class InputError(TaggerError):
    """A value a user gave that tagger does not take; the message names it and says what would do."""


def is_whole_number(text: str) -> bool:
    """ASCII digits only (at most 18 of them): what int() reads the same in every locale."""
    return _WHOLE.fullmatch(text) is not None


def whole_number(name: str, raw: str, low: int, high: int) -> int:
    """ASCII digits only, from `low` to `high`."""
    text = raw.strip(" ")
    if not is_whole_number(text) or not low <= int(text) <= high:
        raise InputError(f"{name} must be a whole number from {low} to {high}, not {_shown(raw)}")
    return int(text)


def score(name: str, raw: str) -> float:
    """A decimal number from 0 to 1, such as 0.6, .25 or 1."""
    text = raw.strip(" ")
    if not _SCORE.fullmatch(text) or not 0.0 <= float(text) <= 1.0:
        raise InputError(f"{name} must be a number from 0 to 1 (e.g. 0.6), not {_shown(raw)}")
    return float(text)


def storable(value: object) -> bool:
    """A number SQLite can compare with a column: a 64-bit integer or a finite float (not a bool)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return SQLITE_INTEGERS[0] <= value <= SQLITE_INTEGERS[1]
    return isinstance(value, float) and math.isfinite(value)


def _shown(raw: str) -> str:
    """The refused value as the message quotes it: escaped, and cut short."""
    return repr(raw if len(raw) <= 40 else raw[:40] + "...")
