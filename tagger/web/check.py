"""Manual check: classify an uploaded image in memory. Nothing is written anywhere.

The same decoding (draft or not, as configured) and preprocessing as a scan, so the answer
is the one a scan gives. One image at a time: the model is shared, and a 50-megapixel PNG
takes 150 MB to decode. And only a few requests wait for it (ModelBusy past them): a serving
thread waiting for the model serves nothing else, so a burst of explanations must not take
every thread from the pages.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from tagger.config import Config
from tagger.engine.decode import decode_bytes, draft_size, preprocess
from tagger.errors import DecodeError
from tagger.engine.labels import Tag

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tagger.index.vectors import LearnedTag

    from tagger.engine.classify import Classifier
    from tagger.engine.explain import Explanation


class ModelBusy(Exception):
    """As many requests as may wait for the model already do: try again in `retry_after` seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"the model is busy with {waiting} other requests; try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class CheckResult:
    name: str
    tags: list[Tag]
    width: int = 0
    height: int = 0
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        if self.error is not None:
            return {"file": self.name, "error": self.error}
        return {
            "file": self.name,
            "width": self.width,
            "height": self.height,
            "seconds": round(self.seconds, 3),
            "tags": [t.as_dict() for t in self.tags],
        }


class Checker:
    def __init__(self, config: Config, classifier: Classifier | None = None) -> None:
        self.config = config
        self._classifier = classifier
        self._lock = threading.Lock()
        self.admitted = max(1, config.web.threads // 2)  # requests running or waiting: half the serving threads
        self._turns = threading.BoundedSemaphore(self.admitted)
        self._seconds = 1.0  # how long a request held the model lately (a running average)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """A request's place among those that may use the model (explain, check), or ModelBusy."""
        if not self._turns.acquire(blocking=False):
            raise ModelBusy(self.admitted, max(1, math.ceil(self._seconds * self.admitted)))
        started = time.monotonic()
        try:
            yield
        finally:
            self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - started)
            self._turns.release()

    @property
    def model_name(self) -> str | None:
        return self._classifier.name if self._classifier is not None else None

    def _model(self) -> Classifier:
        """Loaded on the first check (with the config's fallback and runtime), then kept; call with the lock held."""
        if self._classifier is None:
            from tagger.engine.classify import Classifier

            self._classifier = Classifier.from_settings(self.config.model_choice())
        return self._classifier

    def check(self, name: str, data: bytes, top_k: int) -> CheckResult:
        """Top `top_k` tags of one uploaded file, or the reason it is not an image we can read."""
        started = time.monotonic()
        with self._lock:
            classifier = self._model()
            draft = draft_size(classifier.spec.preprocess, self.config.decode.draft)  # as a scan decodes
            try:
                decoded = decode_bytes(data, self.config.web.max_upload_pixels, draft, "web.max_upload_pixels")
            except DecodeError as exc:
                return CheckResult(name, [], error=str(exc))
            array = preprocess(decoded.image, classifier.spec.preprocess)
            tags = classifier.tag_batch(array[None], top_k)[0]
        return CheckResult(name, tags, decoded.width, decoded.height, time.monotonic() - started)

    def explain(
        self, data: bytes | Image.Image, term: str | None, learned: Callable[[str], Sequence[LearnedTag]]
    ) -> tuple[Explanation, Image.Image]:
        """The map of `term` (an ImageNet class, or learned/NAME; default: the top guess) in an
        indexed photo decoded as a scan decodes it (or in a clip's frame), and that decoded photo; raises DecodeError or
        ExplainError. `learned(model)` gives that model's learned tags."""
        from tagger.engine.explain import LEARNED_PREFIX, ExplainError, explain, explain_learned, look_at

        with self._lock:
            classifier = self._model()
            if isinstance(data, Image.Image):  # a clip's frame, already decoded and upright
                picture, size = data, data.size
            else:
                draft = draft_size(classifier.spec.preprocess, self.config.decode.draft)
                decoded = decode_bytes(data, self.config.decode.max_pixels, draft)
                picture, size = decoded.image, (decoded.width, decoded.height)
            if term is None or not term.strip().startswith(LEARNED_PREFIX):
                return explain(classifier, picture, term, size), picture
            name = term.strip().removeprefix(LEARNED_PREFIX)
            tag = next((t for t in learned(classifier.name) if t.name == name), None)
            if tag is None:
                raise ExplainError(f"no learned tag {name!r} for {classifier.name} (teach it first)")
            view = look_at(classifier, picture, size)
            return explain_learned(view, tag.name, tag.weights, tag.bias), picture
