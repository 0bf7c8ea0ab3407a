"""A user's correction of one image's keywords (`tagger tag add|remove`, the viewer's image page).

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
    record = index.file_record(str(path))
    if record is None or record.sha256 is None or record.status != "tagged":
        raise TaggerError(f"{path}: not a tagged image in the index (run `tagger scan` first)")
    words = [w.strip() for w in keywords if w.strip()]
    if not words:
        raise TaggerError("no keyword given")
    sha256 = record.sha256

    def save() -> None:
        for word in words:
            index.save_correction(sha256, word, action)

    retagger.rekeyword([sha256], f"the correction of {path}", first=save)
    return sha256
