"""Learned tags: your own keyword from a few examples, a linear model on the embeddings.

A logistic regression (scikit-learn) separates the examples you gave from the ones you
rejected and from a sample of the rest of the library (most of which is not your cat), then
scores every image. Matches become keywords like any other (tagger.tags.keywords): searched with
`tag:NAME`, written to sidecars, kept by retag, removed for good by a correction.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from tagger.tags.terms import name_problem
from tagger.engine.features import unit

from tagger.errors import TaggerError
from tagger.vectors.similar import VectorMatrix
from tagger.index import Index
from tagger.index.vectors import LearnedTag

BACKGROUND = 1000  # library images sampled as "probably not", beside the rejected examples
BACKGROUND_WEIGHT = 0.5  # all of them together weigh this many times the positive examples
THRESHOLD = 0.5  # probability at which an image gets the keyword, for a new tag (each tag keeps its own)
STRENGTH = 10.0  # LogisticRegression's C: few examples need little regularisation
CHUNK = 65536  # rows scored at once


class LearnError(TaggerError):
    """Too few or unusable examples."""


@dataclass(frozen=True)
class Model:
    weights: np.ndarray
    bias: float

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        logits = np.asarray(vectors, dtype=np.float32) @ self.weights + self.bias
        result: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
        return result


@dataclass
class Learned:
    tag: LearnedTag
    matches: dict[str, float]  # content -> probability, those at or over the tag's threshold
    changed: list[str]  # contents whose learned keyword appeared, went or changed score
    train_seconds: float = 0.0
    apply_seconds: float = 0.0
    proposals: list[tuple[str, float]] = field(default_factory=list)  # best matches not yet examples


def train(positives: np.ndarray, negatives: np.ndarray, background: np.ndarray) -> Model:
    """Examples weigh one each; the background sample together BACKGROUND_WEIGHT x the positives."""
    x = np.concatenate([positives, negatives, background]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives) + len(background))])
    bg = BACKGROUND_WEIGHT * len(positives) / max(len(background), 1)
    weights = np.concatenate([np.ones(len(positives) + len(negatives)), np.full(len(background), bg)])
    coef, intercept = logistic_regression(x, y, weights, STRENGTH)
    return Model(coef.astype(np.float32), intercept)


def logistic_regression(x: np.ndarray, y: np.ndarray, weights: np.ndarray, strength: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression as liblinear fits it (scikit-learn's LogisticRegression with
    solver="liblinear", C=`strength`): the intercept is a constant feature, regularised with the rest.

    Newton's method, each step solved by conjugate gradients on Hessian-vector products (as liblinear's
    own trust-region Newton does) and shortened by a backtracking line search: two products with the
    examples per CG iteration, no d x d matrix. It agrees with liblinear to 1e-7 on the weights, in
    about the same time. Written here rather than imported: scikit-learn and SciPy were 150 MB of the
    container image for this one fit.
    """
    xa = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xa.shape[1])

    def objective(v: np.ndarray) -> float:
        margins = (2 * y - 1) * (xa @ v)
        return float(0.5 * v @ v + strength * (weights * np.logaddexp(0.0, -margins)).sum())

    current = objective(w)
    for _ in range(100):
        p = 0.5 * (1.0 + np.tanh(0.5 * (xa @ w)))  # the logistic function, without overflow
        gradient = w + strength * xa.T @ (weights * (p - y))
        if float(np.linalg.norm(gradient)) < 1e-10:
            break
        curvature = strength * weights * p * (1 - p)
        step = _conjugate_gradient(lambda v: v + xa.T @ (curvature * (xa @ v)), gradient)
        size, trial = 1.0, current
        while size > 1e-10:
            trial = objective(w - size * step)
            if trial <= current - 1e-4 * size * float(gradient @ step):
                break
            size *= 0.5
        w -= size * step
        done = current - trial < 1e-12 * max(1.0, abs(current))
        current = trial
        if done:
            break
    return w[:-1], float(w[-1])


def cross_validated_precision(
    positives: np.ndarray, negatives: np.ndarray, background: np.ndarray, threshold: float = THRESHOLD
) -> float | None:
    """Precision on held-out examples (k folds, k <= 5): of those called a match (at `threshold`,
    the tag's own, since that is what decides its keyword), how many were.

    Background images count as negatives, which makes it pessimistic. None below 2 positives, and
    None when no held-out image was called a match: 0 of 0 is no estimate (it was shown as 0%).
    """
    if len(positives) < 2:
        return None
    folds = min(5, len(positives))
    true_positive = false_positive = 0

    def split(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        held = np.arange(n) % folds == k
        return ~held, held

    for k in range(folds):
        p_train, p_test = split(len(positives), k)
        n_train, n_test = split(len(negatives), k)
        b_train, b_test = split(len(background), k)
        model = train(positives[p_train], negatives[n_train], background[b_train])
        true_positive += int((model.probabilities(positives[p_test]) >= threshold).sum())
        false_positive += int((model.probabilities(negatives[n_test]) >= threshold).sum())
        false_positive += int((model.probabilities(background[b_test]) >= threshold).sum())
    called = true_positive + false_positive
    return true_positive / called if called else None


def _conjugate_gradient(product: Callable[[np.ndarray], np.ndarray], b: np.ndarray) -> np.ndarray:
    """x with product(x) = b, for a symmetric positive definite product, to 1e-10 of |b|."""
    x = np.zeros_like(b)
    r = b.copy()
    d = r.copy()
    rr = float(r @ r)
    limit = 1e-20 * rr
    for _ in range(len(b)):
        if rr <= limit:
            break
        q = product(d)
        alpha = rr / float(d @ q)
        x += alpha * d
        r -= alpha * q
        rr, previous = float(r @ r), rr
        d = r + (rr / previous) * d
    return x


def unit_rows(matrix: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 unit vectors) chunk by chunk from the int8 search matrix."""
    for start in range(0, len(matrix), CHUNK):
        yield start, unit(matrix[start : start + CHUNK])


def score_library(vectors: VectorMatrix, model: Model) -> np.ndarray:
    """The probability of every content of the matrix, in its order."""
    scores = np.empty(len(vectors), dtype=np.float32)
    for start, chunk in unit_rows(vectors.matrix):
        scores[start : start + len(chunk)] = model.probabilities(chunk)
    return scores


def check_name(name: str) -> str:
    """A new learned tag's name (tagger.tags.terms.name_problem); LearnError says why not."""
    problem = name_problem(name)
    if problem is not None:
        raise LearnError(f"{name!r} cannot be a tag name: {problem}")
    return name.strip()


def check_threshold(value: float) -> float:
    """A probability strictly between 0 and 1: at 0 every image would match, at 1 none."""
    if not 0.0 < value < 1.0:  # NaN fails too
        raise LearnError(f"{value} cannot be a threshold: give a probability between 0 and 1, such as 0.7")
    return float(value)


def learn(
    store: Index, name: str, positive: Sequence[str], negative: Sequence[str] = (), threshold: float | None = None
) -> Learned:
    """Add examples to `name` (contents), train on all of its examples, score the library, store matches.

    The latest word about an image wins: one given as a match after being rejected moves side.
    `threshold` replaces the tag's own (kept by later trainings); None keeps it (THRESHOLD for a new tag).
    Call outside a transaction; the keywords of the contents that changed are left to the caller.
    """
    name = check_name(name)
    if threshold is not None:
        threshold = check_threshold(threshold)  # before anything is written
    rows = store.vectors
    with store.transaction(f"the examples of {name!r}"):
        rows.add_examples(name, negative, positive=False)
        rows.add_examples(name, positive, positive=True)
    return retrain(store, name, threshold)


def set_threshold(store: Index, name: str, threshold: float) -> Learned:
    """Another threshold for an existing tag, applied to the whole library at once.

    Retrained rather than rescored, so that its cross-validated precision is the one at the new threshold.
    """
    threshold = check_threshold(threshold)
    name = name.strip()  # an existing tag, whatever its name (one from before '/' was refused too)
    if store.vectors.learned_tag(name) is None:
        raise LearnError(f"no learned tag {name!r}: teach it first (tagger learn {name} IMAGE...)")
    return retrain(store, name, threshold)


def unlearn(store: Index, name: str) -> list[str]:
    """Forget a learned tag: its model, examples and matches. The contents it had matched, whose
    keywords (and sidecars) the caller redoes. Call outside a transaction. Any existing name is
    taken, one from before '/' was refused too: that is how such a tag is forgotten."""
    name = name.strip()
    rows = store.vectors
    with store.transaction(f"forgetting the learned tag {name!r}"):
        matched = sorted(rows.matches_of(name))
        if not rows.forget(name):
            raise LearnError(f"no learned tag {name!r} (`tagger learned` lists them)")
    return matched


def retrain(store: Index, name: str, threshold: float | None = None) -> Learned:
    """Train `name` on all of its examples and store its matches at `threshold` (None: the tag's own)."""
    rows = store.vectors
    if threshold is None:
        stored = rows.learned_tag(name)
        threshold = THRESHOLD if stored is None else stored.threshold
    examples = rows.examples(name)
    model_name = rows.main_model()
    if model_name is None:
        raise LearnError("no image has an embedding yet: run `tagger scan` first")
    vectors = rows.vectors([sha for sha, _ in examples], model_name)
    pos_shas = [sha for sha, p in examples if p and sha in vectors]
    neg_shas = [sha for sha, p in examples if not p and sha in vectors]
    if not pos_shas:
        raise LearnError(f"{name!r} has no example image with an embedding: give one (run `tagger scan` first)")
    library = VectorMatrix.load(store, model_name)
    taken = set(pos_shas) | set(neg_shas)
    rng = random.Random(name)
    candidates = [i for i in rng.sample(range(len(library)), min(len(library), BACKGROUND + len(taken)))
                  if library.shas[i] not in taken][:BACKGROUND]
    positives = np.stack([vectors[s] for s in pos_shas]).astype(np.float32)
    negatives = np.zeros((0, positives.shape[1]), np.float32)
    if neg_shas:
        negatives = np.stack([vectors[s] for s in neg_shas]).astype(np.float32)
    background = np.zeros((0, positives.shape[1]), np.float32)
    if candidates:
        background = unit(library.matrix[sorted(candidates)])
    started = time.perf_counter()
    model = train(positives, negatives, background)
    train_seconds = time.perf_counter() - started
    precision = cross_validated_precision(positives, negatives, background, threshold)
    started = time.perf_counter()
    scores = score_library(library, model)
    matches = {library.shas[int(i)]: float(scores[i]) for i in np.nonzero(scores >= threshold)[0]}
    for sha in pos_shas:  # an example you gave is a match, whatever the model makes of it
        matches[sha] = max(matches.get(sha, 0.0), threshold)
    for sha in neg_shas:
        matches.pop(sha, None)
    apply_seconds = time.perf_counter() - started
    tag = LearnedTag(name, model_name, model.weights, model.bias, threshold, precision, len(pos_shas), len(neg_shas))
    with store.transaction(f"the learned tag {name!r}"):
        before = rows.matches_of(name)
        rows.save_learned(tag)
        rows.replace_matches(name, matches)
    changed = sorted(
        sha for sha in set(before) | set(matches) if round(before.get(sha, -1.0), 6) != round(matches.get(sha, -1.0), 6)
    )
    proposals = sorted(((s, p) for s, p in matches.items() if s not in taken), key=lambda m: -m[1])
    return Learned(tag, matches, changed, train_seconds, apply_seconds, proposals)


class LearnedModels:
    """The learned tags of one model, for new images as they are tagged (scan and daemon).

    Reloaded when a tag is learned, retrained (a new threshold too) or forgotten meanwhile (one cheap query per batch).
    """

    def __init__(self, store: Index, model: str) -> None:
        self.store = store
        self.model = model
        self._version: tuple[int, str] | None = None
        self._tags: list[LearnedTag] = []

    def stored(self, sha256: str) -> list[tuple[str, float]]:
        """The learned tags found for a content already in the index (a copy, a re-scan)."""
        return self.store.vectors.learned_of(sha256)

    def scores(self, embedding: np.ndarray) -> list[tuple[str, float]]:
        """(name, probability) of each learned tag this image matches."""
        rows = self.store.vectors
        version = rows.learned_version()
        if version != self._version:
            self._tags, self._version = rows.learned(self.model), version
        if not self._tags:
            return []
        vector = unit(embedding)
        found = []
        for tag in self._tags:
            if len(tag.weights) != len(vector):
                continue
            probability = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, float(vector @ tag.weights) + tag.bias))))
            if probability >= tag.threshold:
                found.append((tag.name, probability))
        return found
