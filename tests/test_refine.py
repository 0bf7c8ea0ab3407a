"""Near-tie refinement: its default margin is the one its stored calibration implies, and a near
tie is decoded again in full (bench/bench_refine.py measures how often, and what it costs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tagger.config import DEFAULT_CONFIG, DecodeConfig, load_config
from tagger.engine.classify import Classifier
from tagger.engine.decode import (
    REFINE_QUANTILE,
    calibrated_refine_margin,
    near_ties,
    stored_refine_calibration,
)


def test_the_default_margin_is_the_one_the_stored_calibration_implies() -> None:
    photos = stored_refine_calibration()
    flipped = sorted(m for m, flip in photos if flip)
    assert len(photos) >= 200 and len(flipped) >= 5, "too few photos or flips to take a quantile of"
    margin = calibrated_refine_margin(photos)
    assert DecodeConfig().refine_margin == margin
    assert load_config(DEFAULT_CONFIG, require_folders=False).decode.refine_margin == margin
    covered = sum(m < margin for m in flipped) / len(flipped)
    assert covered >= REFINE_QUANTILE / 100  # the flips seen, at least that share under the margin


def test_the_calibration_rule() -> None:
    """1.5 x the 90th percentile of the flips' draft margins, rounded up to a thousandth; photos
    that did not flip do not count."""
    photos = [(0.01, True), (0.02, True), (0.3, False), (0.0001, False)]
    assert calibrated_refine_margin(photos) == 0.029  # 1.5 x 0.019 = 0.0285
    assert calibrated_refine_margin([(0.02, True)]) == 0.03
    assert calibrated_refine_margin([(0.2, False)]) == 0.0


def test_near_ties_closest_first_within_the_budget() -> None:
    reduced = [True, True, True, False, True]
    margins = [0.03, 0.001, 0.02, 0.0, 0.5]
    assert near_ties(reduced, margins, 0.05, 10) == [0, 1, 2]  # never a full decode, never over the margin
    assert near_ties(reduced, margins, 0.05, 2) == [1, 2]  # the closest two, in batch order
    assert near_ties(reduced, margins, 0.05, 0) == []


def test_a_near_tie_is_decoded_again_in_full(
    tmp_path: Path, lite0: Classifier, weights_dir: Path, sample_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every draft a near tie (margin 1), each photo is decoded a second time, in full (no draft
    size); at margin 0 no photo is decoded twice. (That the full decode's answer is the one recorded:
    tests/test_runtime.py, test_near_ties_are_decoded_again_in_full.)"""
    from tagger.engine.decode import draft_size
    from tagger.index import Index
    from tagger.library import backend
    from tagger.library.scan import Tagger

    library = tmp_path / "lib"
    library.mkdir()
    for name, src in sample_paths.items():
        with Image.open(src) as img:  # 2000x1500: the draft is 1/2 scale, a full decode is 4 times the pixels
            img.convert("RGB").resize((2000, 1500), Image.Resampling.BICUBIC).save(library / f"{name}.jpg", quality=90)
    calls: list[int | None] = []
    real = backend.decode_or_error

    def recorded(data: bytes, max_pixels: int, spec: Any, draft: int | None, *rest: Any) -> Any:
        calls.append(draft)
        return real(data, max_pixels, spec, draft, *rest)

    monkeypatch.setattr(backend, "decode_or_error", recorded)
    monkeypatch.setattr(backend, "REFINE_SHARE", 1.0)

    def scan(name: str, margin: float) -> int:
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(
            f"folders: [{library}]\nindex: {tmp_path / name}.sqlite\nweights_dir: {weights_dir}\n"
            f"model: {{name: efficientnet-lite0, fallback: null}}\nsidecar: {{enabled: false}}\n"
            f"decode: {{draft: true, refine_margin: {margin}}}\n"
        )
        config = load_config(config_path)
        calls.clear()
        with Index.open(config.index) as store:
            tagger = Tagger(config, lite0, store)
            try:
                return tagger.scan(list(config.folders)).refined
            finally:
                tagger.close()

    photos, draft = len(sample_paths), draft_size(lite0.spec.preprocess, True)
    assert scan("every", 1.0) == photos
    assert calls.count(draft) == photos and calls.count(None) == photos  # a draft, then a full decode, each
    assert scan("none", 0.0) == 0
    assert calls == [draft] * photos
