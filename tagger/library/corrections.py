"""A user's correction of one image's keywords (`tagger tag add|remove`, the viewer's image page),
and its undo (the viewer's "Restore").

Corrections are keyed by content, so they hold for every copy of the image and survive
moves, re-tags and a change of model. A correction rewrites the sidecars of that content's
files and nothing else: sidecars an interrupted retag still owes are caught up by the next
retag, scan or daemon start, never inside one click.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tagger.errors import TaggerError
from tagger.index import Index
from tagger.library.keywording import Retagger
from tagger.tags.terms import Action


def correct(retagger: Retagger, path: Path, keywords: Sequence[str], action: Action) -> str:
    """Add or remove keywords of the image at `path` (of its content: every copy); its sha256."""
    index: Index = retagger.index
    sha256, words = _tagged(index, path), _words(keywords)

    def save() -> None:
        for word in words:
            index.save_correction(sha256, word, action)

    retagger.rekeyword([sha256], f"the correction of {path}", first=save)
    return sha256


def restore(retagger: Retagger, path: Path, keywords: Sequence[str]) -> str:
    """Undo removals: each removal is taken back, so a keyword of the model's returns as the model
    gives it now (its score, its place); one the model does not give (the user's own) is added
    back as the user's. A word that was not removed changes nothing. Its sha256."""
    index: Index = retagger.index
    sha256, words = _tagged(index, path), _words(keywords)

    dropped: list[str] = []

    def drop() -> None:
        dropped.extend(word for word in words if index.drop_removal(sha256, word))

    retagger.rekeyword([sha256], f"the restore of keywords of {path}", first=drop)
    shown = {name.casefold() for k in index.keywords(sha256) for name in (k.keyword, k.keyword_zh)}
    missing = [w for w in dropped if w.casefold() not in shown]
    return correct(retagger, path, missing, "add") if missing else sha256


def _tagged(index: Index, path: Path) -> str:
    record = index.file_record(str(path))
    if record is None or record.sha256 is None or record.status != "tagged":
        raise TaggerError(f"{path}: not a tagged image in the index (run `tagger scan` first)")
    return record.sha256


def _words(keywords: Sequence[str]) -> list[str]:
    words = [w.strip() for w in keywords if w.strip()]
    if not words:
        raise TaggerError("no keyword given")
    return words
