"""Near-tie refinement: its default lead is the one its stored calibration implies, a near tie is
decoded again in full, and the cluster's workers and INT8's close calls follow the scan's lead
(bench/bench_refine.py measures how often, and what it costs)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tagger.config import DEFAULT_CONFIG, DecodeConfig, load_config
from tagger.engine.classify import CheckedNetwork, Classifier
from tagger.engine.decode import (
    REFINE_QUANTILE,
    DraftAnswer,
    calibrated_refine_lead,
    expected_misses,
    near_ties,
    stored_refine_calibration,
)

TARGET_MISSES = 0.005  # issue 28: at least 99.5% top-1 = full decode


def test_the_default_lead_is_the_one_the_stored_calibration_implies() -> None:
    photos = stored_refine_calibration()
    flips = [p for p in photos if p.flipped]
    assert len(photos) >= 200 and len(flips) >= 5, "too few photos or flips to measure the draft's error"
    lead = calibrated_refine_lead(photos)
    assert DecodeConfig().refine_lead == lead
    assert load_config(DEFAULT_CONFIG, require_folders=False).decode.refine_lead == lead
    assert sum(p.error < lead for p in photos) / len(photos) >= REFINE_QUANTILE / 100
    assert all(p.draft_lead < lead for p in flips)  # every flip the calibration saw is a near tie
    assert expected_misses(photos, lead) < TARGET_MISSES


def test_the_calibration_rule() -> None:
    """The 95th percentile of |draft lead - full lead| over every photo, flipped or not, rounded up
    to a thousandth; a photo flipped when its draft's top-1 no longer leads on the full decode."""
    photos = [DraftAnswer(1.0 + (-1) ** i * i / 100, 1.0) for i in range(20)]  # errors 0.00 .. 0.19, both ways
    assert calibrated_refine_lead(photos) == 0.181  # 0.18 + 0.05 x 0.01 between the 19th and 20th, rounded up
    assert not any(p.flipped for p in photos)
    assert DraftAnswer(0.05, -0.01).flipped and DraftAnswer(0.05, -0.01).error == pytest.approx(0.06)
    assert calibrated_refine_lead([DraftAnswer(0.3, 0.3)]) == 0.0
    assert calibrated_refine_lead([]) == 0.0


def test_expected_misses_meets_every_lead_with_every_error() -> None:
    """Two photos whose draft leads 0.1 and 1.0, whose drafts lost 0.2 and 0.0 of it on the full
    decode: of the four pairings, a lead of 0.1 meets a loss of 0.2 once (a flip) if it is not refined."""
    photos = [DraftAnswer(0.1, -0.1), DraftAnswer(1.0, 1.0)]
    assert expected_misses(photos, 0.0) == pytest.approx(1 / 4)
    assert expected_misses(photos, 0.15) == 0.0


def test_near_ties_closest_first_within_the_budget() -> None:
    reduced = [True, True, True, False, True]
    leads = [0.3, 0.01, 0.2, 0.0, 5.0]
    assert near_ties(reduced, leads, 0.5, 10) == [0, 1, 2]  # never a full decode, never over the lead
    assert near_ties(reduced, leads, 0.5, 2) == [1, 2]  # the closest two, in batch order
    assert near_ties(reduced, leads, 0.5, 0) == []


def test_predict_answers_the_logit_lead(lite0: Classifier, sample_paths: dict[str, Path]) -> None:
    """The lead is the best logit minus the second: the log of the best two probabilities' ratio."""
    from tagger.engine.decode import decode_array

    arrays = np.stack([decode_array(p.read_bytes(), 10**8, lite0.spec.preprocess, None).array
                       for p in list(sample_paths.values())[:3]])
    tags, leads, _ = lite0.predict(arrays, 2)
    for (first, second), lead in zip(tags, leads):
        assert lead == pytest.approx(np.log(first.score / second.score), abs=1e-6) and lead >= 0


def _camera_jpegs(sample_paths: dict[str, Path], folder: Path | None = None) -> list[bytes]:
    """The sample photos at 2000x1500: drafted at 1/2 scale, a full decode four times the pixels."""
    blobs = []
    for name, src in sample_paths.items():
        out = io.BytesIO()
        with Image.open(src) as img:
            img.convert("RGB").resize((2000, 1500), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
        blobs.append(out.getvalue())
        if folder is not None:
            (folder / f"{name}.jpg").write_bytes(out.getvalue())
    return blobs


def test_a_near_tie_is_decoded_again_in_full(
    tmp_path: Path, lite0: Classifier, weights_dir: Path, sample_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every draft a near tie (lead 100), each photo is decoded a second time, in full (no draft
    size); at lead 0 no photo is decoded twice. (That the full decode's answer is the one recorded:
    tests/test_runtime.py, test_near_ties_are_decoded_again_in_full.)"""
    from tagger.engine.decode import draft_size
    from tagger.index import Index
    from tagger.library import backend
    from tagger.library.scan import Tagger

    library = tmp_path / "lib"
    library.mkdir()
    _camera_jpegs(sample_paths, library)
    calls: list[int | None] = []
    real = backend.decode_or_error

    def recorded(data: bytes, max_pixels: int, spec: Any, draft: int | None, *rest: Any) -> Any:
        calls.append(draft)
        return real(data, max_pixels, spec, draft, *rest)

    monkeypatch.setattr(backend, "decode_or_error", recorded)
    monkeypatch.setattr(backend, "REFINE_SHARE", 1.0)

    def scan(name: str, lead: float) -> int:
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(
            f"folders: [{library}]\nindex: {tmp_path / name}.sqlite\nweights_dir: {weights_dir}\n"
            f"model: {{name: efficientnet-lite0, fallback: null}}\nsidecar: {{enabled: false}}\n"
            f"decode: {{draft: true, refine_lead: {lead}}}\n"
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
    assert scan("every", 100.0) == photos
    assert calls.count(draft) == photos and calls.count(None) == photos  # a draft, then a full decode, each
    assert scan("none", 0.0) == 0
    assert calls == [draft] * photos


class _RecordingChecked(CheckedNetwork):
    """fp32 on both sides, recording the near-tie lead each run is given."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner, inner, 0.0)
        self.near_ties: list[float] = []

    def __call__(self, batch: np.ndarray, near_tie: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        self.near_ties.append(near_tie)
        return super().__call__(batch, near_tie)


def test_a_worker_refines_and_checks_int8_at_the_coordinators_lead(
    lite0: Classifier, sample_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker takes the lead from the job, not from its own config: for its near ties, and for
    INT8's close calls about them; a job without drafts refines nothing and checks no lead."""
    pytest.importorskip("distributed")
    from types import SimpleNamespace

    from tagger.cluster import worker
    from tagger.cluster.backend import job_settings
    from tagger.config import Config, ModelConfig

    network = _RecordingChecked(lite0.network)
    int8 = Classifier(lite0.spec, lite0.weights, network, "onnx-int8")
    plugin = worker.TaggerModel(int8)
    monkeypatch.setattr(worker, "get_worker", lambda: SimpleNamespace(name="w-1", plugins={worker.PLUGIN_NAME: plugin}))
    blobs = _camera_jpegs(sample_paths)

    def run(draft: bool, lead: float) -> tuple[int, list[float]]:
        config = Config((), Path("i.sqlite"), Path("w"), ModelConfig(), DecodeConfig(draft=draft, refine_lead=lead))
        settings = job_settings(config, int8)
        assert settings.model == plugin.identity and settings.model.precision == "int8"
        network.near_ties.clear()
        result = worker.classify_job(settings.job(blobs, refine_allowed=len(blobs)))
        assert all(not isinstance(item, str) for item in result.items)
        return result.refined, list(network.near_ties)

    assert run(True, 100.0) == (len(blobs), [100.0, 0.0])  # the drafts at the job's lead; the full decodes at none
    assert run(True, 0.0) == (0, [0.0])
    assert run(False, 100.0) == (0, [0.0])  # nothing drafted: nothing refined, no lead to check
