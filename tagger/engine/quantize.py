"""INT8 export: static quantization calibrated on shipped photos, then its errors made smaller.

Run inside the export child (`tagger.engine.torchnet`), once per weights file, scheme and CPU kind.
Mean |logit error| against fp32 on the benchmark's 206 distinct photos (u8s8), and how often
the top-1 matched fp32's:
- static quantization alone: 0.159 (84.5%);
- each layer's mean shift taken out of its integer bias (`correct_biases`): 0.067 (94.2%);
- weights rounded for each layer's output, not each to its nearest step (GPTQ,
  `round_weights`): 0.054;
- pooling and the classifier left in float (0.3% of the arithmetic, no loss of speed): 0.049.
u8s8r7 (7-bit weights, x86 without VNNI) ends at 0.077. The top-1 still matched fp32's on only
93-95%: 8-bit activations alone leave 0.062 with float weights, and a tenth of these photos are
closer calls than that. So `check_margin` measures, on this CPU's kernels, how close is too
close, and `tagger.engine.classify.CheckedNetwork` runs those photos again in fp32.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tagger.cpu import INT8_SCHEMES
from tagger.engine.weights import ModelSpec

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

# Layers whose integer bias absorbs the measured shift (those with a bias input).
CORRECTED_OPS = ("Conv", "Gemm")
# Left in float: pooling and the classifier. Quantizing the logits alone cost 0.016 of the error.
FLOAT_OPS = ("GlobalAveragePool", "Gemm")
# GPTQ's damping, as a share of the mean input energy: 0.1 (0.049) did better than 0.01 (0.051) here.
DAMPING = 0.1
ENERGY_BYTES = 400 * 2**20  # input energies held at once while rounding
BLOCK = 128  # GPTQ's columns per block: passes the error on to the rest in one product
# A close call: INT8's best two logits nearer than this quantile of its error on unseen photos.
CHECK_QUANTILE = 90


def calibration_batches(spec: ModelSpec) -> list[np.ndarray]:
    """Shipped CC0 photos (tagger/data/calibration), preprocessed as the model expects."""
    from tagger.engine.decode import decode_bytes, preprocess

    folder = resources.files("tagger").joinpath("data/calibration")
    arrays = []
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if item.name.endswith(".jpg"):
            image = decode_bytes(item.read_bytes(), 10**8).image
            arrays.append(preprocess(image, spec.preprocess)[None])
    return arrays


def mirrored_calibration(spec: ModelSpec) -> np.ndarray:
    """The calibration photos left-right mirrored: other pictures of the same kind, for `check_margin`."""
    return np.ascontiguousarray(np.concatenate(calibration_batches(spec))[..., ::-1])


def quantize_int8(spec: ModelSpec, fp32: Path, tmp: Path, scheme: str, correct_bias: bool = True) -> Path:
    """Static INT8 in `scheme` (tagger.cpu): per-channel weights, QDQ, percentile calibration;
    then (`correct_bias`) its weights rounded by GPTQ and its biases corrected.

    Of the variants measured (QOperator/QDQ x MinMax/Entropy/Percentile), percentile
    calibration did best: MinMax and Entropy let outlier activations stretch the ranges
    (measured on the benchmark's photos: 86.9% before and 93.7% after bias correction, against
    percentile's 84.5% and 95.6%).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    arrays = calibration_batches(spec)

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
        def __init__(self) -> None:
            self.items = iter(arrays)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {"input": item}

    import onnx

    activations, weights, reduce_range = INT8_SCHEMES[scheme]
    prepared, out = tmp / "prepared.onnx", tmp / "int8.onnx"
    quant_pre_process(str(fp32), str(prepared))
    in_float = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type in FLOAT_OPS]
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
        weight_type=QuantType.QUInt8 if weights == "u8" else QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile,
        nodes_to_exclude=in_float,
    )
    if correct_bias:
        batch = np.concatenate(arrays)
        round_weights(prepared, out, batch, reduce_range)
        correct_biases(prepared, out, batch)
    return out


def _probe(model: onnx.ModelProto, names: list[str]) -> ort.InferenceSession:
    """A float session of `model` (unfused: QDQ evaluated in float) that also outputs `names`."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {output.name for output in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep each layer's output
    options.log_severity_level = 3
    return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])


def layer_means(model: onnx.ModelProto, names: list[str], batch: np.ndarray) -> list[np.ndarray]:
    """Each named tensor's mean per channel over `batch`, evaluated unfused (QDQ in float)."""
    session = _probe(model, names)
    totals: list[np.ndarray | None] = [None] * len(names)
    counts = [0] * len(names)
    for start in range(0, len(batch), 8):
        for i, value in enumerate(session.run(names, {"input": batch[start : start + 8]})):
            axes = (0, 2, 3) if value.ndim == 4 else (0,)
            part = value.astype(np.float64).sum(axis=axes)
            totals[i] = part if totals[i] is None else totals[i] + part
            counts[i] += value.size // value.shape[1]
    return [total / count for total, count in zip(totals, counts) if total is not None]


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _rows(node: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
    """What each weight row of `node` multiplies: (N, D) samples, or (channels, N, k*k) for a depthwise conv.

    A convolution's input as the rows of its matrix product (im2col), in the weight's own order
    (input channel, kernel row, kernel column).
    """
    if node.op_type == "Gemm":
        return x.reshape(len(x), -1)
    a = _attributes(node)
    k, stride, group = int(a["kernel_shape"][0]), int(a.get("strides", [1])[0]), int(a.get("group", 1))
    top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
    if k == 1 and stride == 1:
        return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    if group == 1:
        return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * k * k)
    return windows.transpose(1, 0, 2, 3, 4, 5).reshape(x.shape[1], -1, k * k)


def input_energies(model: onnx.ModelProto, layers: list[onnx.NodeProto], batch: np.ndarray) -> list[np.ndarray]:
    """Each layer's E[x x^T] over its input rows on `batch` (per channel for a depthwise conv)."""
    names = [node.input[0] for node in layers]
    session = _probe(model, names)
    sums: list[np.ndarray | None] = [None] * len(layers)
    counts = [0] * len(layers)
    for start in range(0, len(batch), 4):
        for i, (node, value) in enumerate(zip(layers, session.run(names, {"input": batch[start : start + 4]}))):
            rows = _rows(node, value.astype(np.float32))
            part = np.matmul(np.swapaxes(rows, -1, -2), rows).astype(np.float64)
            sums[i] = part if sums[i] is None else sums[i] + part
            counts[i] += rows.shape[-2]
    return [total / count for total, count in zip(sums, counts) if total is not None]


def gptq(weight: np.ndarray, energy: np.ndarray, scale: np.ndarray, low: int, high: int) -> np.ndarray:
    """Integer codes for `weight` (rows x D, or channels x 1 x D with an energy per channel).

    GPTQ (Frantar et al., 2022): each column is rounded in turn, and the rounding error, weighted
    by the input's inverse energy, is passed on to the columns not yet rounded, so that the layer's
    output, not each weight, stays closest to float. Same scales, same integers kept in range.
    """
    batched = energy.ndim == 3
    w = (weight if batched else weight[None]).astype(np.float64).copy()
    h = (energy if batched else energy[None]).copy()
    size = h.shape[-1]
    diagonal = np.einsum("cii->ci", h)
    idle = diagonal == 0  # an input that is always 0: its weight does not matter
    h[:, np.arange(size), np.arange(size)] += DAMPING * diagonal.mean(axis=1, keepdims=True) + idle
    upper = np.swapaxes(np.linalg.cholesky(np.linalg.inv(h)), -1, -2)
    steps = scale.reshape(w.shape[0], w.shape[1]) if batched else scale.reshape(1, -1)
    codes = np.zeros(w.shape, np.int64)
    for start in range(0, size, BLOCK):  # within a block column by column, then the rest at once
        end = min(start + BLOCK, size)
        block, errors = w[:, :, start:end], np.zeros((w.shape[0], w.shape[1], end - start))
        for j in range(end - start):
            codes[:, :, start + j] = np.clip(np.round(block[:, :, j] / steps), low, high)
            errors[:, :, j] = (block[:, :, j] - codes[:, :, start + j] * steps) / upper[:, start + j, start + j][:, None]
            block[:, :, j + 1 :] -= errors[:, :, j, None] * upper[:, None, start + j, start + j + 1 : end]
        w[:, :, end:] -= np.matmul(errors, upper[:, start:end, end:])
    return codes if batched else codes[0]


def _groups(layers: list[onnx.NodeProto], floats: dict[str, onnx.TensorProto],
            by_name: dict[str, onnx.NodeProto]) -> list[list[onnx.NodeProto]]:
    """Layers in network order, in groups whose input energies fit ENERGY_BYTES (one pass over the photos each).

    EfficientNet-Lite0's all fit in one; ResNet-18's 3x3 convolutions of 512 channels take 170 MB each.
    """
    groups: list[list[onnx.NodeProto]] = [[]]
    used = 0
    for node in layers:
        dims = list(floats[by_name[node.name].input[1]].dims)
        depthwise = int(_attributes(by_name[node.name]).get("group", 1)) > 1
        size = 8 * (dims[0] * int(np.prod(dims[2:])) ** 2 if depthwise else int(np.prod(dims[1:])) ** 2)
        if groups[-1] and used + size > ENERGY_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(node)
        used += size
    return groups


def round_weights(prepared: Path, quantized: Path, batch: np.ndarray, reduce_range: bool) -> None:
    """Re-round every quantized weight with GPTQ, from each layer's float inputs on `batch`.

    With float activations, rounding each weight to its nearest step left a mean |logit error|
    of 0.127 on the benchmark's photos; rounding for each layer's output, 0.043.
    """
    import onnx
    from onnx import numpy_helper

    reference, model = onnx.load(str(prepared)), onnx.load(str(quantized))
    by_name = {node.name: node for node in reference.graph.node}
    floats = {init.name: init for init in reference.graph.initializer}
    initializers = {init.name: init for init in model.graph.initializer}
    dequantizers = {node.output[0]: node for node in model.graph.node if node.op_type == "DequantizeLinear"}
    layers = [node for node in model.graph.node
              if node.op_type in CORRECTED_OPS and node.input[1] in dequantizers and node.name in by_name]
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    # The range the quantizer itself used: symmetric, 7 bits (-64..64) or 8 (-127..127).
    low, high = (int(v) for v in get_qmin_qmax_for_qType(onnx.TensorProto.INT8, reduce_range, symmetric=True))
    for group in _groups(layers, floats, by_name):
        for node, energy in zip(group, input_energies(reference, [by_name[node.name] for node in group], batch)):
            codes_name, scale_name = dequantizers[node.input[1]].input[:2]
            old = numpy_helper.to_array(initializers[codes_name])
            scale = numpy_helper.to_array(initializers[scale_name]).astype(np.float64)
            weight = numpy_helper.to_array(floats[by_name[node.name].input[1]]).astype(np.float64)
            rows = weight.reshape(len(weight), 1, -1) if energy.ndim == 3 else weight.reshape(len(weight), -1)
            try:
                codes = gptq(rows, energy, scale, low, high).reshape(old.shape).astype(old.dtype)
            except np.linalg.LinAlgError:  # not invertible even damped: this layer keeps nearest rounding
                continue
            initializers[codes_name].CopyFrom(numpy_helper.from_array(codes, codes_name))
    onnx.save(model, str(quantized))


def correct_biases(prepared: Path, quantized: Path, batch: np.ndarray) -> None:
    """Take each layer's mean shift from fp32 out of its integer bias, first layer first.

    In network order, because correcting a layer changes what every later layer receives:
    correcting all layers at once from one measurement overshot and diverged.
    """
    import onnx
    from onnx import numpy_helper

    reference, model = onnx.load(str(prepared)), onnx.load(str(quantized))
    by_name = {node.name: node for node in reference.graph.node}
    initializers = {init.name: init for init in model.graph.initializer}
    dequantizers = {node.output[0]: node for node in model.graph.node if node.op_type == "DequantizeLinear"}
    layers = [
        node for node in model.graph.node
        if node.op_type in CORRECTED_OPS and len(node.input) > 2 and node.input[2] in dequantizers
        and node.name in by_name
    ]
    wanted = layer_means(reference, [by_name[node.name].output[0] for node in layers], batch)
    for node, target in zip(layers, wanted):
        (seen,) = layer_means(model, [node.output[0]], batch)
        bias_q, bias_scale = dequantizers[node.input[2]].input[:2]
        scale = numpy_helper.to_array(initializers[bias_scale]).astype(np.float64)
        values = numpy_helper.to_array(initializers[bias_q]).astype(np.int64)
        values -= np.round((seen - target) / scale).astype(np.int64)
        info = np.iinfo(np.int32)
        initializers[bias_q].CopyFrom(numpy_helper.from_array(np.clip(values, info.min, info.max).astype(np.int32), bias_q))
    onnx.save(model, str(quantized))


def check_margin(fp32: Path, quantized: Path, batch: np.ndarray) -> float:
    """The logit lead under which INT8's top-1 is not trusted on this CPU (tagger.engine.classify).

    INT8's error in the lead of its best class over each of its next four, on `batch` (the
    calibration photos mirrored: pictures the corrections above did not see), run by this
    CPU's own integer kernels; its CHECK_QUANTILE-th percentile. A photo whose INT8 lead is
    under it is a close call that INT8's error could have decided.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    outputs = []
    for path in (quantized, fp32):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs.append(np.concatenate([session.run(["logits"], {"input": batch[i : i + 8]})[0]
                                       for i in range(0, len(batch), 8)]).astype(np.float64))
    fast, exact = outputs
    order = np.argsort(-fast, axis=1)[:, :5]
    best, rest = order[:, :1], order[:, 1:]
    lead_fast = np.take_along_axis(fast, best, 1) - np.take_along_axis(fast, rest, 1)
    lead_exact = np.take_along_axis(exact, best, 1) - np.take_along_axis(exact, rest, 1)
    return float(np.percentile(np.abs(lead_fast - lead_exact).max(axis=1), CHECK_QUANTILE))
