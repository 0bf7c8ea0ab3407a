"""What travels between a coordinator and its workers: the model's identity, a job, its result.

Both sides import this and nothing else of each other's: a job is bytes and settings out, tags back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagger.engine.classify import Classifier
from tagger.engine.labels import Tag
from tagger.errors import TaggerError


@dataclass(frozen=True)
class ModelIdentity:
    """What must be equal on the coordinator and every worker for their tags to be the same."""

    name: str
    weights_sha256: str
    precision: str  # fp32 or int8: an INT8 model can give another top-1

    @classmethod
    def of(cls, classifier: Classifier) -> ModelIdentity:
        return cls(classifier.name, classifier.weights.sha256, "int8" if "int8" in classifier.runtime else "fp32")

    def __str__(self) -> str:
        return f"{self.name} {self.precision} (weights sha256 {self.weights_sha256[:16]}...)"


@dataclass(frozen=True)
class Job:
    """One batch: the coordinator's model and decode settings travel with the bytes, so a worker
    decodes exactly as the coordinator would have."""

    model: ModelIdentity
    blobs: tuple[bytes, ...]
    top_k: int
    max_pixels: int
    draft: bool
    refine_lead: float  # decode.refine_lead: near ties and INT8's close calls on the worker as here
    refine_allowed: int  # near ties decoded again in full at most (tagger.engine.decode.near_ties)


@dataclass(frozen=True)
class Classified:
    width: int
    height: int
    tags: tuple[Tag, ...]
    embedding: np.ndarray  # the pooled features, from the same model run (tagger.vectors.embeddings)
    image_hash: int  # of the model's input (tagger.engine.features.image_hash)


@dataclass(frozen=True)
class JobResult:
    worker: str  # the worker's name: host-pid
    items: tuple[Classified | str, ...]  # the tags of each image, or why it could not be decoded
    refined: int  # near ties decoded again in full


class ModelMismatch(TaggerError):
    """This worker runs another model or other weights than the coordinator."""


@dataclass(frozen=True)
class JobSettings:
    """The coordinator's decode and model settings, sent with every batch."""

    model: ModelIdentity
    top_k: int
    max_pixels: int
    draft: bool
    refine_lead: float

    def job(self, blobs: list[bytes], refine_allowed: int) -> Job:
        return Job(self.model, tuple(blobs), self.top_k, self.max_pixels, self.draft, self.refine_lead, refine_allowed)
