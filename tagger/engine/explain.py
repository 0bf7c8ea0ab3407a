"""Why this tag: a class activation map (CAM) for any guess, over the whole photo.

The networks tagger runs end in global average pooling and one linear layer, so a class's
logit is the mean over the last feature map's cells of `weight[class] . fmap[:, y, x]`
(plus the bias): that sum per cell is exactly how much each region added to the score, and
Grad-CAM reduces to it. It costs one model run that also returns the feature map
(tagger.engine.classify), and a dot product; any linear model over the pooled features (learned
tags) gives its map the same way, through `activation_map`.

The model sees only the centre crop of the photo (tagger.engine.decode.preprocess); the map is
placed where that crop lies in the photo, and the rest is marked as not seen (NaN).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tagger.engine.decode import crop_box, preprocess
from tagger.errors import TaggerError
from tagger.engine.labels import ImageNetClass, imagenet_classes, resolve_tag
from tagger.engine.weights import Preprocess

if TYPE_CHECKING:
    from tagger.engine.classify import Classifier

GRID_SHORT_SIDE = 32  # cells across the photo's short side in the JSON map: 4 per feature-map cell
GRID_MAX_SIDE = 512  # a panorama's long side, at most
OVERLAY_SIZE = 1024  # the long side of a rendered overlay: the viewer shows it screen-sized
HEAT_ALPHA = 0.55  # how strongly the colours cover the photo in a rendered overlay
CROP_PIXELS = 224  # the map is upsampled to the model's crop before it is scaled to the photo

# A perceptual colour map (matplotlib's "turbo", sampled at 9 points): blue is none of this
# class's evidence, red the most. Interpolated to 256 entries; no matplotlib at run time.
_TURBO = np.array(
    [
        (48, 18, 59), (65, 105, 225), (28, 177, 228), (38, 226, 160), (151, 253, 67),
        (230, 216, 40), (254, 147, 40), (220, 60, 10), (122, 4, 3),
    ],
    dtype=np.float64,
)
COLOURS = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_TURBO)), _TURBO[:, i]) for i in range(3)], axis=1
).round().astype(np.uint8)


LEARNED_PREFIX = "learned/"  # a tag term naming a learned tag, as its keyword is written


class ExplainError(TaggerError):
    """An explanation that cannot be given: an unknown tag, or a model without its feature map."""


@dataclass(frozen=True)
class Box:
    """The part of the photo the model saw, in the photo's pixels (as shown, upright)."""

    left: float
    top: float
    right: float
    bottom: float


@dataclass(frozen=True)
class ModelView:
    """One model run on a photo: all that any explanation of it needs."""

    logits: np.ndarray  # the 1000 ImageNet classes'
    feature_map: np.ndarray  # C x h x w, before global pooling
    width: int  # the photo as shown
    height: int
    seen: Box

    @property
    def pooled(self) -> np.ndarray:
        """The features the classifier (or a linear model on embeddings) sees."""
        pooled: np.ndarray = self.feature_map.mean(axis=(1, 2))
        return pooled

    def probabilities(self) -> np.ndarray:
        shifted = np.exp(self.logits.astype(np.float64) - float(self.logits.max()))
        probabilities: np.ndarray = shifted / shifted.sum()
        return probabilities


@dataclass(frozen=True)
class Explanation:
    label: str
    label_zh: str
    class_id: int | None  # None for a tag that is not an ImageNet class (a learned tag)
    score: float  # the model's probability for this tag
    cam: np.ndarray  # h x w over the centre crop: each cell's share of the score (before the bias)
    width: int  # the photo as shown
    height: int
    seen: Box

    def heat(self, cols: int, rows: int) -> np.ndarray:
        """The map over the whole photo on a rows x cols grid: 0..1 (1 the strongest evidence), NaN where not seen."""
        return normalised(on_grid(self.cam, self.seen, self.width, self.height, cols, rows))

    def grid_size(self) -> tuple[int, int]:
        """(cols, rows) of the JSON map: square cells, GRID_SHORT_SIDE across the short side."""
        short = min(self.width, self.height)
        cols = min(GRID_MAX_SIDE, max(1, round(GRID_SHORT_SIDE * self.width / short)))
        rows = min(GRID_MAX_SIDE, max(1, round(GRID_SHORT_SIDE * self.height / short)))
        return cols, rows

    def as_dict(self) -> dict[str, object]:
        """{"label", "class_id", "score", "map"}: the map as rows, left to right and top to bottom, null where not seen."""
        heat = self.heat(*self.grid_size())
        rows = [[None if math.isnan(v) else round(float(v), 3) for v in row] for row in heat]
        return {
            "label": self.label,
            "label_zh": self.label_zh,
            "class_id": self.class_id,
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
            "seen": [round(v, 1) for v in (self.seen.left, self.seen.top, self.seen.right, self.seen.bottom)],
            "map": rows,
        }


def activation_map(fmap: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """C x h x w feature map, C weights (a classifier row, or a learned tag's linear model) -> h x w.

    Each cell's contribution to the score `weights . mean(fmap)`: their mean is that score.
    """
    if fmap.ndim != 3 or weights.shape != (fmap.shape[0],):
        raise ExplainError(f"weights of shape {weights.shape} do not fit a feature map of shape {fmap.shape}")
    cam: np.ndarray = np.tensordot(weights.astype(np.float32), fmap.astype(np.float32), axes=1)
    return cam


def seen_box(width: int, height: int, spec: Preprocess) -> Box:
    """Where preprocess()'s centre crop lies in a width x height photo."""
    return Box(*crop_box(width, height, spec))


def _axis_weights(n_out: int, extent: float, start: float, stop: float, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation from `n_cells` (spanning start..stop) to `n_out` cell centres over 0..extent.

    As cv2/PIL resize with pixel centres, clamped at the edges; returns the n_out x n_cells
    weights and which outputs fall outside start..stop (not seen).
    """
    centres = (np.arange(n_out) + 0.5) * (extent / n_out)
    position = (centres - start) / (stop - start) * n_cells - 0.5
    position = np.clip(position, 0, n_cells - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, n_cells - 1)
    frac = position - low
    weights = np.zeros((n_out, n_cells))
    np.add.at(weights, (np.arange(n_out), low), 1 - frac)
    np.add.at(weights, (np.arange(n_out), high), frac)
    return weights, (centres < start) | (centres >= stop)


def on_grid(cam: np.ndarray, seen: Box, width: int, height: int, cols: int, rows: int) -> np.ndarray:
    """The crop's h x w map, upsampled (bilinear) and placed on a rows x cols grid over the photo; NaN outside."""
    across, outside_x = _axis_weights(cols, width, seen.left, seen.right, cam.shape[1])
    down, outside_y = _axis_weights(rows, height, seen.top, seen.bottom, cam.shape[0])
    grid: np.ndarray = down @ cam.astype(np.float64) @ across.T
    grid[outside_y, :] = np.nan
    grid[:, outside_x] = np.nan
    return grid


def normalised(grid: np.ndarray) -> np.ndarray:
    """Negative evidence to 0, the strongest to 1 (as Grad-CAM shows it); NaN stays NaN."""
    positive: np.ndarray = np.maximum(grid, 0, where=~np.isnan(grid), out=grid.copy())
    top = float(np.nanmax(positive)) if np.isfinite(positive).any() else 0.0
    if top > 0:
        positive /= top
    return positive


def choose_class(term: str | None, probabilities: np.ndarray) -> ImageNetClass:
    """The class `term` names (English or Chinese label, WordNet id, class id), or the top guess.

    A word naming several classes ("cat") means the one this photo scores highest.
    """
    classes = imagenet_classes()
    if term is None or not term.strip():
        return classes[int(np.argmax(probabilities))]
    matches = resolve_tag(term)
    if not matches:
        from tagger.engine.labels import suggest_labels

        close = suggest_labels(term)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ExplainError(f"no ImageNet class is called {term.strip()!r}{hint}")
    return max(matches, key=lambda c: float(probabilities[c.class_id]))


def look_at(classifier: Classifier, image: Image.Image, size: tuple[int, int] | None = None) -> ModelView:
    """One model run on `image` (upright RGB), returning the feature map too.

    `size` is the photo's size as shown, when `image` is a reduced decode of it.
    """
    if classifier.with_map is None:
        raise ExplainError(f"{classifier.name} ({classifier.runtime}) does not return its feature map")
    spec = classifier.spec.preprocess
    logits, fmaps = classifier.with_map(preprocess(model_view(image, spec), spec)[None])
    width, height = size or image.size
    return ModelView(logits[0], fmaps[0], width, height, seen_box(width, height, spec))


def explain(classifier: Classifier, image: Image.Image, term: str | None = None, size: tuple[int, int] | None = None) -> Explanation:
    """The map of `term`'s ImageNet class in `image`, or of the top guess."""
    view = look_at(classifier, image, size)
    probabilities = view.probabilities()
    cls = choose_class(term, probabilities)
    score = float(probabilities[cls.class_id])
    return explain_weights(view, classifier.head.weight[cls.class_id], cls.label, cls.label_zh, score, cls.class_id)


def explain_weights(
    view: ModelView, weights: np.ndarray, label: str, label_zh: str, score: float, class_id: int | None = None
) -> Explanation:
    """The map of any linear model over the pooled features: a classifier row, or a learned tag's
    weights (for a model on L2-normalised features the map only scales, and is shown normalised)."""
    cam = activation_map(view.feature_map, weights)
    return Explanation(label, label_zh, class_id, score, cam, view.width, view.height, view.seen)


def explain_learned(view: ModelView, name: str, weights: np.ndarray, bias: float) -> Explanation:
    """A learned tag (tagger.vectors.learned): a logistic regression over the L2-normalised pooled features."""
    if weights.shape != view.pooled.shape:
        raise ExplainError(f"learned tag {name!r} has {len(weights)} weights; this model's features have {len(view.pooled)}")
    unit = view.pooled / max(float(np.linalg.norm(view.pooled)), 1e-12)
    score = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, float(unit @ weights) + bias))))
    return explain_weights(view, weights, f"{LEARNED_PREFIX}{name}", f"{LEARNED_PREFIX}{name}", score)


def model_view(image: Image.Image, spec: Preprocess) -> Image.Image:
    """A large photo reduced by a whole factor first, to no less than twice the model's resize, as
    a scan's draft decoding reduces a JPEG: a 12-megapixel PNG is then explained in tens of
    milliseconds, not hundreds (a draft-decoded JPEG is already that small, and left as it is)."""
    factor = min(image.size) // (2 * spec.resize)
    return image.reduce(factor) if factor >= 2 else image


def _overlay_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _crop_colours(explanation: Explanation, size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """The map upsampled to the model's crop (crop x crop pixels), coloured, then scaled to where the
    crop lies in an image of `size` (PIL does the large resize; numpy only the crop's pixels)."""
    crop = CROP_PIXELS
    heat = normalised(on_grid(explanation.cam, Box(0, 0, crop, crop), crop, crop, crop, crop))
    colours = Image.fromarray(COLOURS[(heat * 255).astype(np.uint8)], "RGB")
    return colours.resize((max(1, box[2] - box[0]), max(1, box[3] - box[1])), Image.Resampling.BILINEAR)


def _seen_in(explanation: Explanation, size: tuple[int, int]) -> tuple[int, int, int, int]:
    sx, sy = size[0] / explanation.width, size[1] / explanation.height
    s = explanation.seen
    return round(s.left * sx), round(s.top * sy), round(s.right * sx), round(s.bottom * sy)


def heat_layer(explanation: Explanation, long_side: int = OVERLAY_SIZE) -> Image.Image:
    """RGBA: the colour map over the seen part, transparent where the model did not look."""
    size = _overlay_size(explanation.width, explanation.height, long_side)
    box = _seen_in(explanation, size)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste(_crop_colours(explanation, size, box).convert("RGBA"), box[:2])
    return layer


def overlay(explanation: Explanation, photo: Image.Image, long_side: int = OVERLAY_SIZE) -> Image.Image:
    """The photo with the map blended in and the part not seen greyed and striped: what a person looks at."""
    size = _overlay_size(explanation.width, explanation.height, long_side)
    base = photo.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    diagonal = (np.arange(size[1])[:, None] + np.arange(size[0])[None, :]) // 6 % 2
    stripes = Image.fromarray(np.where(diagonal == 0, 60, 170).astype(np.uint8), "L").convert("RGB")
    shown = Image.blend(base, stripes, 0.6)
    box = _seen_in(explanation, size)
    region = base.crop(box)
    shown.paste(Image.blend(region, _crop_colours(explanation, size, box), HEAT_ALPHA), box[:2])
    return shown


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)  # fast: made on request, not kept
    return out.getvalue()
