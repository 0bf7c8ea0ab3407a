"""The 1000 ImageNet classes: index, WordNet id, English and Chinese label.

Shipped as a TSV in the package so that labels never depend on a download or on which
model (and so which library) is in use.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from tagger.inputs import is_whole_number


@dataclass(frozen=True)
class ImageNetClass:
    class_id: int
    wnid: str
    label: str
    label_zh: str


@dataclass(frozen=True)
class Tag:
    """One of the model's guesses about an image."""

    class_id: int
    wnid: str
    label: str
    label_zh: str
    score: float
    frame_s: float | None = None  # a video's tag: seconds into the clip of the frame that gave it

    def as_dict(self) -> dict[str, object]:
        shown: dict[str, object] = {
            "class_id": self.class_id,
            "wnid": self.wnid,
            "label": self.label,
            "label_zh": self.label_zh,
            "score": round(self.score, 6),
        }
        if self.frame_s is not None:
            shown["frame_s"] = self.frame_s
        return shown


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """All 1000 classes in model output order."""
    text = resources.files("tagger").joinpath("data/imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    classes = tuple(
        ImageNetClass(int(r["class_id"]), r["wnid"], r["label"], r.get("label_zh") or r["label"]) for r in rows
    )
    if len(classes) != 1000 or any(c.class_id != i for i, c in enumerate(classes)):
        raise RuntimeError("tagger/data/imagenet_classes.tsv is damaged: expected classes 0..999 in order")
    return classes


def resolve_tag(term: str) -> list[ImageNetClass]:
    """The classes a search term means.

    An exact English or Chinese label, WordNet id or class number names one class;
    otherwise an English word ("cat") means every label containing that word, and Chinese
    text ("猫") every Chinese label containing it.
    """
    text = term.strip()
    if not text:
        return []
    classes = imagenet_classes()
    if is_whole_number(text):
        number = int(text)
        return [classes[number]] if number < len(classes) else []
    folded = text.casefold()
    exact = [c for c in classes if folded in (c.label.casefold(), c.wnid, c.label_zh.casefold())]
    if exact:
        return exact
    if text.isascii():
        return [c for c in classes if folded in c.label.casefold().replace("-", " ").split()]
    return [c for c in classes if text in c.label_zh]


def suggest_labels(term: str, n: int = 3) -> list[str]:
    """Close English labels, for an error message about an unknown tag."""
    import difflib

    return difflib.get_close_matches(term, [c.label for c in imagenet_classes()], n=n)
