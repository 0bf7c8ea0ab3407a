"""The ONNX export's contract and cache: what an export holds, where it lives, when it is made again.

Both sides read it: tagger.engine.torchnet writes exports (in a child process, with torch) and
tagger.engine.classify loads them (with ONNX Runtime alone).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.cpu import int8_scheme
from tagger.errors import WeightsError
from tagger.engine.weights import ModelSpec, WeightsFile, file_sha256

log = logging.getLogger(__name__)

# What an ONNX export holds (tagger.engine.torchnet writes it, recorded in its provenance JSON): a cached
# export of another format lacks an output or the head file, or (before 3) an INT8 model's bias
# correction, or (before 4) its GPTQ rounding and close-call margin, and is made again.
EXPORT_FORMAT = 4
EXPORT_OUTPUTS = ("logits", "features", "feature_map")
HEAD_SUFFIX = ".head.npz"  # beside the .onnx file: the classifier layer's weights, for explanations


@dataclass(frozen=True)
class Head:
    """The classifier layer: logits = weight @ pooled features + bias."""

    weight: np.ndarray  # classes x C, float32
    bias: np.ndarray  # classes


def export_precision(precision: str) -> str:
    """The exported model's kind: fp32, or int8 in the scheme exact on this CPU (int8-u8s8r7...).

    It is part of the cache file's name, so a model quantised for a VNNI CPU and copied to
    an AVX2-only one is never used there: that machine looks for, and makes, its own.
    """
    return f"int8-{int8_scheme()}" if precision == "int8" else precision


def onnx_cache_path(spec: ModelSpec, weights: WeightsFile, weights_dir: Path, precision: str) -> Path:
    return weights_dir / "onnx" / f"{Path(spec.filename).stem}.{export_precision(precision)}.onnx"


def cached_export_is_current(path: Path, weights: WeightsFile, precision: str) -> bool:
    try:
        meta = json.loads(path.with_name(path.name + ".json").read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("source_sha256") == weights.sha256
        and meta.get("precision") == export_precision(precision)
        and meta.get("format") == EXPORT_FORMAT
        and meta.get("outputs") == list(EXPORT_OUTPUTS)
        and path.is_file()
        and meta.get("onnx_sha256") == file_sha256(path)
        and head_path(path).is_file()
        and meta.get("head_sha256") == file_sha256(head_path(path))
        and (precision != "int8" or isinstance(meta.get("check_margin"), float))
    )


def head_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + HEAD_SUFFIX)


def load_head(onnx_path: Path) -> Head:
    """The classifier weights an export wrote beside its model (checked with it by its hash)."""
    try:
        with np.load(head_path(onnx_path)) as data:
            return Head(np.asarray(data["weight"], np.float32), np.asarray(data["bias"], np.float32))
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"{head_path(onnx_path)}: unreadable classifier weights: {exc}") from None


def export(spec: ModelSpec, weights: WeightsFile, out: Path, precision: str) -> None:
    """Run the export in a child process so that torch never enters this one."""
    # INT8 is calibrated, GPTQ-rounded, then bias-corrected layer by layer: here 50-60 s for
    # EfficientNet-Lite0, about 2 minutes for ResNet-18 (peak 2 GB, 1.8 of it ONNX Runtime's
    # calibration), more on a small CPU.
    slow = " (calibrating and correcting INT8: one to a few minutes)" if precision == "int8" else ""
    log.info("exporting %s (%s) to ONNX once%s: %s", spec.name, precision, slow, out)
    cmd = [
        sys.executable, "-m", "tagger.engine.torchnet", "--model", spec.name, "--weights", str(weights.path),
        "--sha256", weights.sha256, "--out", str(out), "--precision", export_precision(precision),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise WeightsError(f"cannot export {spec.name} to ONNX: {reason}")


def exported(spec: ModelSpec, weights: WeightsFile, weights_dir: Path, precision: str) -> tuple[Path, dict[str, object]]:
    """The export of `weights` in `precision`, made now if the cached one is missing or stale; its provenance."""
    path = onnx_cache_path(spec, weights, weights_dir, precision)
    if not cached_export_is_current(path, weights, precision):
        export(spec, weights, path, precision)
    meta: dict[str, object] = json.loads(path.with_name(path.name + ".json").read_text())
    return path, meta
