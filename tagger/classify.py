"""The model: load verified weights once, turn a batch of arrays into ranked tags."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from tagger.errors import WeightsError, WeightsMissingError
from tagger.labels import Tag, imagenet_classes
from tagger.weights import MODELS, ModelSpec, WeightsFile, find_weights

log = logging.getLogger(__name__)


def build_network(name: str) -> torch.nn.Module:
    """The architecture alone, with untrained weights."""
    if name == "resnet18":
        from torchvision.models import resnet18

        return resnet18(weights=None)
    if name == "efficientnet-lite0":
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0")
    raise WeightsError(f"unknown model {name!r} (choose one of {', '.join(MODELS)})")


def load_network(spec: ModelSpec, weights: WeightsFile) -> torch.nn.Module:
    """Strict load: a file with missing, extra or misshapen tensors is refused, never half-used."""
    network = build_network(spec.name)
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged pickle/zip
        raise WeightsError(f"{weights.path}: not a readable PyTorch weights file: {exc}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{weights.path}: expected a state dict, found {type(state).__name__}")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise WeightsError(f"{weights.path}: weights do not fit {spec.name}: {' '.join(first)}") from None
    return network.eval()


class Classifier:
    """One loaded model; `tag_batch` is the only thing the pipeline calls."""

    def __init__(self, spec: ModelSpec, weights: WeightsFile, network: torch.nn.Module) -> None:
        self.spec = spec
        self.weights = weights
        self.network = network
        self.classes = imagenet_classes()

    @classmethod
    def load(cls, name: str, weights_dir: Path, fallback: str | None = None) -> Classifier:
        """Load `name`, or `fallback` (saying why in one line) when `name`'s weights are absent."""
        spec = MODELS[name]
        try:
            weights = find_weights(spec, weights_dir)
        except WeightsMissingError:
            if fallback is None or fallback == name:
                raise
            log.warning("%s weights not installed (%s); using %s instead", name, spec.filename, fallback)
            spec = MODELS[fallback]
            weights = find_weights(spec, weights_dir)
        return cls(spec, weights, load_network(spec, weights))

    @property
    def name(self) -> str:
        return self.spec.name

    @torch.inference_mode()
    def tag_batch(self, batch: np.ndarray, top_k: int) -> list[list[Tag]]:
        """N x 3 x H x W float32 -> for each image, its top_k tags by probability."""
        logits = self.network(torch.from_numpy(batch))
        probabilities = logits.softmax(dim=1)
        scores, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        return [
            [self._tag(int(i), float(s)) for s, i in zip(row_scores, row_indices)]
            for row_scores, row_indices in zip(scores.tolist(), indices.tolist())
        ]

    def _tag(self, class_id: int, score: float) -> Tag:
        c = self.classes[class_id]
        return Tag(c.class_id, c.wnid, c.label, c.label_zh, score)
