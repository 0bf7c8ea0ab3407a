"""INT8's corrections (GPTQ rounding, bias correction) hold on photos they never saw; close calls go to fp32."""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from tagger.engine.classify import CheckedNetwork, Classifier

from tagger.engine.export import onnx_cache_path
from tagger.cpu import cpu_info, int8_scheme
from tagger.engine.decode import open_rgb, preprocess
from tagger.engine.quantize import calibration_batches, correct_biases, gptq, quantize_int8, round_weights


def held_out(views: list[Path]) -> list[Path]:
    """The views of subjects that no calibration photo shows."""
    folder = resources.files("tagger").joinpath("data/calibration")
    calibrated = {item.name.rsplit("_", 1)[0] for item in folder.iterdir() if item.name.endswith(".jpg")}
    return [view for view in views if view.name.split("_view")[0] not in calibrated]


def logits(path: Path, batch: np.ndarray) -> np.ndarray:
    """As a scan runs the model: fused, the CPU's integer kernels."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"input": batch})[0], dtype=np.float64)


@pytest.fixture(scope="module")
def plain_and_corrected(lite0: Classifier, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("quantize")
    fp32 = onnx_cache_path(lite0.spec, lite0.weights, weights_dir, "fp32")
    plain = quantize_int8(lite0.spec, fp32, tmp, int8_scheme(), correct_bias=False)
    corrected = tmp / "corrected.onnx"
    shutil.copy(plain, corrected)
    batch = np.concatenate(calibration_batches(lite0.spec))
    round_weights(tmp / "prepared.onnx", corrected, batch, reduce_range=int8_scheme() == "u8s8r7")
    correct_biases(tmp / "prepared.onnx", corrected, batch)
    return plain, corrected


def test_corrections_hold_on_photos_they_never_saw(
    lite0: Classifier, weights_dir: Path, views: list[Path], plain_and_corrected: tuple[Path, Path]
) -> None:
    """Measured on the calibration photos, GPTQ rounding and bias correction must hold on other subjects' photos.

    A shift taken out early also stops it from pushing later layers' values off their ranges,
    so the whole error falls, not only its mean: measured on 14 such photos, from PLAIN to
    CORR (u8s8 on AVX-512 VNNI) and from PLAIN7 to CORR7 (u8s8r7, exact on every x86 CPU).
    """
    print(f"CPU seen: {cpu_info().describe()}; int8 scheme: {int8_scheme()}")
    photos = held_out(views)
    assert len(photos) >= 10, "the views should include subjects the calibration photos do not show"
    batch = np.stack([preprocess(open_rgb(p, 10**9).image, lite0.spec.preprocess) for p in photos])
    reference = logits(onnx_cache_path(lite0.spec, lite0.weights, weights_dir, "fp32"), batch)
    errors = {}
    for name, path in zip(("plain", "corrected"), plain_and_corrected):
        difference = logits(path, batch) - reference
        errors[name] = float(np.abs(difference).mean())
        shift = float(np.abs(difference.mean(axis=0)).mean())
        print(f"{name}: mean |logit error| {errors[name]:.3f} (of it the mean shift {shift:.3f}) on {len(photos)} photos")
    assert errors["corrected"] < 0.6 * errors["plain"]


def test_the_cached_int8_model_is_the_corrected_one(
    lite0: Classifier, weights_dir: Path, plain_and_corrected: tuple[Path, Path]
) -> None:
    """`precision: int8` exports the corrected model: only the integer weights and biases differ
    from plain, every scale is the same, every weight is in the scheme's range, and the export
    records the margin under which its close calls go to fp32."""
    import json

    import onnx
    from onnx import numpy_helper

    print(f"CPU seen: {cpu_info().describe()}; int8 scheme: {int8_scheme()}")
    Classifier.load("efficientnet-lite0", weights_dir, runtime="onnx", precision="int8")
    cached = onnx_cache_path(lite0.spec, lite0.weights, weights_dir, "int8")
    models = [onnx.load(str(path)) for path in (plain_and_corrected[0], cached)]
    plain, used = ({i.name: numpy_helper.to_array(i) for i in m.graph.initializer} for m in models)
    assert plain.keys() == used.keys()
    changed = {name for name in plain if not np.array_equal(plain[name], used[name])}
    codes = {node.input[0] for node in models[0].graph.node
             if node.op_type == "DequantizeLinear" and plain.get(node.input[0], np.zeros(0)).dtype in (np.int32, np.int8)}
    assert changed and changed <= codes, f"changed beyond the integer weights and biases: {sorted(changed - codes)[:3]}"
    assert any(used[name].dtype == np.int8 for name in changed) and any(used[name].dtype == np.int32 for name in changed)
    high = 64 if int8_scheme() == "u8s8r7" else 127
    assert all(np.abs(used[name].astype(int)).max() <= high for name in changed if used[name].dtype == np.int8)
    meta = json.loads(cached.with_name(cached.name + ".json").read_text())
    print(f"close-call margin for this CPU's kernels: {meta['check_margin']:.3f}")
    assert meta["weights_rounded"] == "gptq" and 0 < meta["check_margin"] < 2


def test_gptq_rounds_for_the_layers_output() -> None:
    """On correlated inputs, GPTQ's integers must give the layer's output closer than nearest rounding does."""
    rng = np.random.default_rng(5)
    mixing = rng.normal(size=(64, 64))
    inputs = rng.normal(size=(4000, 64)) @ mixing  # correlated, as a layer's inputs are
    weight = rng.normal(size=(32, 64))
    scale = np.abs(weight).max(axis=1) / 127
    nearest = np.clip(np.round(weight / scale[:, None]), -127, 127)
    rounded = gptq(weight, inputs.T @ inputs / len(inputs), scale, -127, 127)
    assert rounded.shape == weight.shape and np.abs(rounded).max() <= 127
    assert np.abs(rounded - nearest).max() >= 1  # it rounds some weights the other way, not by more than a step or two
    error = {name: float(np.square(inputs @ (weight - codes * scale[:, None]).T).mean())
             for name, codes in (("nearest", nearest), ("gptq", rounded))}
    print(f"output error: nearest {error['nearest']:.3g}, GPTQ {error['gptq']:.3g}")
    assert error["gptq"] < 0.75 * error["nearest"]  # 0.60 here (damped as in the export)
    channels = rng.normal(size=(6, 1, 9))  # depthwise: one energy per channel
    energies = np.stack([x.T @ x / 500 for x in rng.normal(size=(6, 500, 9)) @ rng.normal(size=(9, 9))])
    codes = gptq(channels, energies, np.abs(channels).max(axis=2).ravel() / 64, -64, 64)
    assert codes.shape == channels.shape and np.abs(codes).max() <= 64


def test_close_calls_are_run_again_in_fp32() -> None:
    """Rows whose best two INT8 logits are nearer than the margin take fp32's logits and features; the rest keep INT8's."""
    fast_logits = np.array([[5.0, 4.95, 0.0], [5.0, 1.0, 0.0], [0.0, 2.0, 2.1], [3.0, 0.0, 0.0], [3.0, 2.6, 2.6]], np.float32)
    seen: list[np.ndarray] = []

    def fast(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fast_logits[batch[:, 0, 0, 0].astype(int)], np.zeros((len(batch), 2), np.float32)  # row i holds i

    def exact(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(batch)
        return np.full((len(batch), 3), 7.0, np.float32), np.ones((len(batch), 2), np.float32)

    network = CheckedNetwork(fast, exact, margin=0.2)
    batch = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 3, 2, 2), np.float32)
    logits, features = network(batch)
    assert [float(b[0, 0, 0]) for b in seen[0]] == [0.0, 2.0]  # rows 0 and 2: leads 0.05 and 0.1
    assert logits[0].tolist() == [7.0] * 3 and logits[2].tolist() == [7.0] * 3
    assert logits[1].tolist() == [5.0, 1.0, 0.0] and features[1].tolist() == [0.0, 0.0]
    assert features[0].tolist() == [1.0, 1.0] and network.checked == 2
    network(batch[[1, 3]])
    assert network.checked == 2 and len(seen) == 1  # no close call: fp32 is not run
    # A scan that refines drafts under a lead of 0.5: row 4's lead of 0.4 is clear of the margin,
    # but within it of 0.5, so whether it is decoded again could be INT8's error: fp32 decides.
    five = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 3, 2, 2), np.float32)
    network(five, near_tie=0.5)
    assert [float(b[0, 0, 0]) for b in seen[1]] == [0.0, 2.0, 4.0] and network.checked == 5
    network(five, near_tie=0.65)  # 0.4 is more than the margin away: INT8's own rule trusts it
    assert [float(b[0, 0, 0]) for b in seen[2]] == [0.0, 2.0]
    network(five, near_tie=1.0)  # well under the threshold: decoded again whatever INT8's error
    assert [float(b[0, 0, 0]) for b in seen[3]] == [0.0, 2.0]
