"""The PyTorch side: build an architecture, load weights strictly, export it to ONNX.

Importing torch costs 2.5 s and 500 MB, so the tagging process never does when an ONNX
export is cached: exports run once, in a child process (`python -m tagger.engine.torchnet`).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from tagger.engine.export import EXPORT_FORMAT, EXPORT_OUTPUTS, HEAD_SUFFIX
from tagger.cpu import INT8_SCHEMES, cpu_info
from tagger.errors import WeightsError
from tagger.engine.quantize import check_margin, mirrored_calibration, quantize_int8
from tagger.engine.weights import MODELS, ModelSpec, WeightsFile, file_sha256


def build_network(name: str) -> torch.nn.Module:
    """The architecture alone, with untrained weights."""
    if name == "resnet18":
        from torchvision.models import resnet18

        network: torch.nn.Module = resnet18(weights=None)
        return network
    if name == "efficientnet-lite0":
        from efficientnet_lite_pytorch import EfficientNet

        lite0: torch.nn.Module = EfficientNet.from_name("efficientnet-lite0")
        return lite0
    raise WeightsError(f"unknown model {name!r} (choose one of {', '.join(MODELS)})")


# The classifier layer of each architecture: its input is the pooled feature vector.
HEADS = {"resnet18": "fc", "efficientnet-lite0": "_fc"}
# Its global average pooling: the network's own layer, so that the logits stay bit for bit the same.
POOLS = {"resnet18": "avgpool", "efficientnet-lite0": "_avg_pooling"}


class WithFeatures(torch.nn.Module):
    """The network with three outputs: logits; the pooled features the classifier sees (embeddings);
    and the last feature map (N x C x 7 x 7) before global pooling (explanations, tagger.engine.explain).

    Pooled and classified here exactly as the network does, so one run gives all three and the
    logits are unchanged.
    """

    def __init__(self, network: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.network = network
        self.name = name
        self.classifier: torch.nn.Linear = getattr(network, HEADS[name])
        self.pool: torch.nn.Module = getattr(network, POOLS[name])

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        n = self.network
        if self.name == "efficientnet-lite0":
            fmap: torch.Tensor = n.extract_features(x)  # type: ignore[operator]
            return fmap
        for layer in (n.conv1, n.bn1, n.relu, n.maxpool, n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)  # type: ignore[operator]
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fmap = self.feature_map(x)
        features = torch.flatten(self.pool(fmap), 1)
        return self.classifier(features), features, fmap


def load_with_features(spec: ModelSpec, weights: WeightsFile) -> WithFeatures:
    return WithFeatures(load_network(spec, weights), spec.name).eval()


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


def export_onnx(spec: ModelSpec, weights: WeightsFile, out: Path, precision: str) -> dict[str, object]:
    """Write `out` (and `out`.json, its provenance) atomically; int8 is calibrated on shipped photos."""
    network = load_with_features(spec, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, not broken
            torch.onnx.export(
                network,
                (torch.zeros(1, 3, spec.preprocess.crop, spec.preprocess.crop),),
                str(fp32),
                input_names=["input"],
                output_names=list(EXPORT_OUTPUTS),
                dynamic_axes={"input": {0: "batch"}, **{name: {0: "batch"} for name in EXPORT_OUTPUTS}},
                opset_version=17,
                dynamo=False,
            )
        result, margin = fp32, None
        if precision.startswith("int8-"):
            result = quantize_int8(spec, fp32, Path(tmp), precision.removeprefix("int8-"))
            margin = check_margin(fp32, result, mirrored_calibration(spec))
        head = Path(tmp) / "head.npz"
        weight, bias = network.classifier.weight.detach().numpy(), network.classifier.bias.detach().numpy()
        with head.open("wb") as fh:
            np.savez(fh, weight=weight.astype(np.float32), bias=bias.astype(np.float32))
        meta: dict[str, object] = {
            "model": spec.name,
            "precision": precision,
            "bias_corrected": precision.startswith("int8-"),
            "weights_rounded": "gptq" if precision.startswith("int8-") else None,
            "format": EXPORT_FORMAT,
            "outputs": list(EXPORT_OUTPUTS),
            "head_sha256": file_sha256(head),
            "made_on": cpu_info().describe(),
            "source_sha256": weights.sha256,
            "onnx_sha256": file_sha256(result),
            "torch": torch.__version__,
        }
        if margin is not None:
            meta["check_margin"] = margin
        result.replace(out)
        head.replace(out.with_name(out.name + HEAD_SUFFIX))
        meta_tmp = Path(tmp) / "meta.json"
        meta_tmp.write_text(json.dumps(meta, indent=2))
        meta_tmp.replace(out.with_name(out.name + ".json"))
    return meta


def main() -> int:
    parser = argparse.ArgumentParser(description="Export a verified weights file to ONNX (run by tagger itself).")
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--weights", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sha256", required=True, help="the hash the parent process verified")
    parser.add_argument("--precision", choices=["fp32", *(f"int8-{s}" for s in INT8_SCHEMES)], default="fp32")
    args = parser.parse_args()
    spec = MODELS[args.model]
    try:
        sha = file_sha256(args.weights)
        if sha != args.sha256:
            raise WeightsError(f"{args.weights}: changed while it was being exported (sha256 {sha[:16]}...)")
        export_onnx(spec, WeightsFile(args.weights, sha), args.out, args.precision)
    except (WeightsError, OSError) as exc:
        print(f"tagger: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
