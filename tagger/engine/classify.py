"""The model: load verified weights once, turn a batch of arrays into ranked tags.

Two runtimes behind one interface. ONNX Runtime is the default: it starts in a fraction
of a second, needs a fifth of the memory and runs faster than eager PyTorch. Its model
file is exported once from the verified weights and cached beside them, with the
weights' hash, so it is rebuilt whenever the weights change. PyTorch is the reference
and the fallback when no export can be made.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tagger.cpu import cpu_info
from tagger.errors import WeightsError, WeightsMissingError
from tagger.engine.export import Head, export_precision, exported, load_head
from tagger.engine.features import unit
from tagger.engine.labels import Tag, imagenet_classes
from tagger.engine.weights import MODELS, ModelChoice, ModelSpec, WeightsFile, file_sha256, find_weights

log = logging.getLogger(__name__)

# N x 3 x H x W float32 -> (N x 1000 logits, N x D pooled features: 1280 for Lite0, 512 for ResNet-18)
Network = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# -> (N x 1000 logits, N x D x 7 x 7 last feature maps), which only an explanation asks for.
FeatureMapNetwork = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

# Per image of a batch: its top-k tags, its margin (best minus second-best probability), its embedding (a row).
Prediction = tuple[list[list[Tag]], list[float], np.ndarray]

SCAN_OUTPUTS = ["logits", "features"]  # what a scan asks for: never the feature map



def onnx_network(
    path: Path, threads: int | None = None, source_sha256: str | None = None
) -> tuple[Network, FeatureMapNetwork]:
    """One session, run two ways: a scan asks for the logits and features, an explanation for the logits and feature map."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The arena keeps one batch's activations for the next run. Without it, each run maps them
    # afresh (tagger.memory sends every buffer over 1 MB to its own mapping) and the kernel zeroes
    # every page again: a fifth of the scan's CPU went to that. Measured on 200 camera photos:
    # EfficientNet-Lite0 37.8 -> 43.3 images/s for +4 MB of peak, ResNet-18 23.8 -> 24.5 for
    # +3 MB. It holds the largest batch it has seen: Classifier.max_batch bounds that.
    options.enable_cpu_mem_arena = True
    # Decoder threads share these cores: idle ORT threads must sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    optimised = optimised_model(path, source_sha256)
    if optimised is not None:  # already optimised for this CPU: loading it holds the model once
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(optimised or path), options, providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = session.run(SCAN_OUTPUTS, {"input": batch})
        return logits, features

    def run_with_map(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, fmap = session.run(["logits", "feature_map"], {"input": batch})
        return logits, fmap

    return run, run_with_map


_OPTIMISE = (
    "import sys, onnxruntime as ort\n"
    "o = ort.SessionOptions()\n"
    "o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL\n"
    "o.optimized_model_filepath = sys.argv[2]\n"
    "ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n"
)


def optimised_model(path: Path, source_sha256: str | None = None) -> Path | None:
    """ONNX Runtime's optimised form of an exported model for this CPU, made once in a child process.

    Optimising at every start rewrites the weights into the CPU's blocked layout while the
    originals are still held: ResNet-18's session peaked at 210 MB that way, 111 MB loaded from
    the optimised file (EfficientNet-Lite0: 174 and 122 MB after a few batches), at the same
    speed. The optimised file suits only CPUs of the same vector width and the ONNX Runtime that
    made it, so both are in its name, with the hash of the model it came from; its own hash is
    checked at each start. `source_sha256`: the model's hash where the caller has just verified
    it (no second read of the file). None (and the model is optimised at load, as before) when it
    cannot be made.
    """
    import onnxruntime as ort

    try:
        source = source_sha256 or file_sha256(path)
    except OSError as exc:
        log.warning("%s: cannot read the model (%s); optimising at each start instead", path, exc)
        return None
    name = f"{path.stem}.{source[:12]}.{cpu_info().vector_isa}.ort{ort.__version__}.opt.onnx"
    # Beside the export; where that folder is read-only (a container's image, built on another CPU),
    # in the user's cache folder (the container's HOME is its index volume).
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tagger" / "onnx"
    for folder in (path.parent, cache):
        out = folder / name
        try:
            if json.loads(out.with_name(out.name + ".json").read_text()).get("sha256") == file_sha256(out):
                return out
        except (OSError, ValueError, AttributeError):
            pass
    out = (path.parent if os.access(path.parent, os.W_OK) else cache) / name
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _optimise(path, out, source)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s: cannot save ONNX Runtime's optimised model (%s); optimising at each start instead", path, exc)
        return None
    return out


def _optimise(path: Path, out: Path, source: str) -> None:
    """Write ONNX Runtime's optimised `path` to `out`, with its hash beside it; OSError when it cannot."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        result = subprocess.run(
            [sys.executable, "-c", _OPTIMISE, str(path), str(tmp)], capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0 or not tmp.is_file():
            reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise OSError(reason)
        out.with_name(out.name + ".json").write_text(json.dumps({"source_sha256": source, "sha256": file_sha256(tmp)}))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _onnx_model(
    spec: ModelSpec, weights: WeightsFile, weights_dir: Path, precision: str
) -> tuple[Network, FeatureMapNetwork, Path]:
    """The scan's network, the explanations' one and the export whose head explains.

    INT8 comes with the fp32 model, which runs its close calls again (CheckedNetwork) and
    makes its explanations: a heatmap is looked at, not counted, and fp32's is the exact one.
    """
    path, meta = exported(spec, weights, weights_dir, "fp32")
    network, with_map = onnx_network(path, source_sha256=_verified(meta))
    if precision != "int8":
        return network, with_map, path
    fast_path, fast_meta = exported(spec, weights, weights_dir, precision)
    margin = fast_meta.get("check_margin")
    if not isinstance(margin, float):
        raise WeightsError(f"{fast_path}: its provenance lacks the close-call margin")
    fast, _ = onnx_network(fast_path, source_sha256=_verified(fast_meta))
    return CheckedNetwork(fast, network, margin), with_map, path


def _verified(meta: dict[str, object]) -> str | None:
    """The export's hash as its provenance records it (checked against the file when it was found current)."""
    value = meta.get("onnx_sha256")
    return value if isinstance(value, str) else None


class CheckedNetwork:
    """INT8 first; its close calls again in fp32, so that its answers are fp32's.

    INT8's logits are off by about 0.05 (tagger.engine.quantize), so where its best two logits are
    nearer than `margin` (measured at export, for this CPU's kernels) the order may be INT8's
    error: those images are run again in fp32, and fp32's logits and features replace INT8's.
    A scan that refines drafts passes `near_tie` (decode.refine_lead): a lead under it sends the
    draft to a full decode, so a lead within `margin` of it is a close call too, and whether a
    draft is decoded again is never INT8's error (a lead well under it is decoded again anyway,
    and INT8's answer is trusted there as anywhere over `margin`). On the benchmark's 206 photos
    (u8s8) 22% were run again without refinement, and INT8's top-1 then matched fp32's on all of
    them, against 93% without the check.
    """

    def __init__(self, fast: Network, exact: Network, margin: float) -> None:
        self.fast = fast
        self.exact = exact
        self.margin = margin
        self.checked = 0  # images run again in fp32 so far

    def __call__(self, batch: np.ndarray, near_tie: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.fast(batch)
        best_two = np.partition(logits, -2, axis=1)[:, -2:].astype(np.float64)
        lead = best_two[:, 1] - best_two[:, 0]
        near = lead < self.margin
        if near_tie > 0:
            near |= np.abs(lead - near_tie) < self.margin
        close = np.flatnonzero(near)
        if close.size:
            logits, features = np.array(logits), np.array(features)
            logits[close], features[close] = self.exact(np.ascontiguousarray(batch[close]))
            self.checked += int(close.size)
        return logits, features


def torch_network(spec: ModelSpec, weights: WeightsFile) -> tuple[Network, FeatureMapNetwork, Head]:
    import torch

    from tagger.engine.torchnet import load_with_features

    module = load_with_features(spec, weights)
    head = Head(module.classifier.weight.detach().numpy().copy(), module.classifier.bias.detach().numpy().copy())

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, features, _ = module(torch.from_numpy(batch))
        return logits.numpy(), features.numpy()

    def run_with_map(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, _, fmap = module(torch.from_numpy(batch))
        return logits.numpy(), fmap.numpy()

    return run, run_with_map, head


def _onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class Classifier:
    """One loaded model; `tag_batch` is the only thing the pipeline calls."""

    def __init__(
        self,
        spec: ModelSpec,
        weights: WeightsFile,
        network: Network,
        runtime: str = "torch",
        with_map: FeatureMapNetwork | None = None,
        head: Callable[[], Head] | None = None,
    ) -> None:
        self.spec = spec
        self.weights = weights
        self.network = network
        self.runtime = runtime
        self.with_map = with_map  # None: this classifier cannot explain (tagger.engine.explain says so)
        self._head_loader = head
        self._head: Head | None = None
        self.classes = imagenet_classes()
        # ONNX Runtime's arena keeps the largest batch a session has run: from_settings caps each
        # run at model.batch_size, whatever a caller hands `predict` (refinement, backfill, workers).
        self.max_batch: int | None = None

    @classmethod
    def load(
        cls,
        name: str,
        weights_dir: Path,
        fallback: str | None = None,
        runtime: str = "torch",
        precision: str = "fp32",
    ) -> Classifier:
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
        if runtime == "torch" or (runtime == "auto" and not _onnx_available()):
            return cls._on_torch(spec, weights)
        try:
            network, with_map, path = _onnx_model(spec, weights, weights_dir, precision)
        except (WeightsError, OSError, ValueError) as exc:
            if runtime == "onnx":
                raise WeightsError(f"ONNX runtime requested but unavailable: {exc}") from None
            log.warning("%s; using PyTorch instead (slower, more memory)", exc)
            return cls._on_torch(spec, weights)
        return cls(spec, weights, network, f"onnx-{export_precision(precision)}", with_map, lambda: load_head(path))

    @classmethod
    def _on_torch(cls, spec: ModelSpec, weights: WeightsFile) -> Classifier:
        network, with_map, head = torch_network(spec, weights)
        return cls(spec, weights, network, "torch", with_map, lambda: head)

    @classmethod
    def from_settings(cls, choice: ModelChoice) -> Classifier:
        """The classifier a config names (Config.model_choice), with its batch bound."""
        classifier = cls.load(choice.name, choice.weights_dir, choice.fallback, choice.runtime, choice.precision)
        classifier.max_batch = choice.max_batch
        return classifier

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def checked(self) -> int:
        """Close calls of INT8 run again in fp32 so far (0 for any other model)."""
        return self.network.checked if isinstance(self.network, CheckedNetwork) else 0

    @property
    def head(self) -> Head:
        """The classifier layer's weights, read on the first explanation (a scan never needs them)."""
        if self._head is None:
            if self._head_loader is None:
                raise WeightsError(f"{self.name} ({self.runtime}) has no classifier weights to explain with")
            self._head = self._head_loader()
        return self._head

    def tag_batch(self, batch: np.ndarray, top_k: int) -> list[list[Tag]]:
        """N x 3 x H x W float32 -> for each image, its top_k tags by probability."""
        return self.predict(batch, top_k)[0]

    def predict(self, batch: np.ndarray, top_k: int, near_tie: float = 0.0) -> Prediction:
        """The top_k tags of each image, its lead (its best logit minus the second-best) and its
        embedding (the pooled features, L2-normalised float32), all from one model run.

        A small lead is a near tie, which a slightly different decode of the same photo can flip;
        `near_tie` is the lead under which the caller will decode a draft again (decode.refine_lead,
        0 where nothing is refined): INT8's close calls include the leads near it.
        A batch over `max_batch` is run in parts of that size.
        """
        size = self.max_batch
        if size and len(batch) > size:
            parts = [self.predict(batch[i : i + size], top_k, near_tie) for i in range(0, len(batch), size)]
            return ([t for p in parts for t in p[0]], [m for p in parts for m in p[1]],
                    np.concatenate([p[2] for p in parts]))
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        if isinstance(self.network, CheckedNetwork):
            raw, features = self.network(inputs, near_tie)
        else:
            raw, features = self.network(inputs)
        logits = raw.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        k = min(max(top_k, 2), probabilities.shape[1])
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        leads = [float(row[i[0]] - row[i[1]]) for row, i in zip(logits, top)]
        tags = [[self._tag(int(i), float(row[i])) for i in indices[:top_k]] for row, indices in zip(probabilities, top)]
        return tags, leads, unit(features.reshape(len(features), -1))

    def _tag(self, class_id: int, score: float) -> Tag:
        c = self.classes[class_id]
        return Tag(c.class_id, c.wnid, c.label, c.label_zh, score)
