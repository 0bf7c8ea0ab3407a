"""Explanations: the class activation map is right (where the evidence is, agreeing with Grad-CAM,
summing to the logit), placed over the whole photo, and reachable from the CLI."""
from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tagger.engine import explain as cam
from tagger.engine.classify import Classifier
from tagger.engine.export import EXPORT_FORMAT, cached_export_is_current, onnx_cache_path
from tagger.cli import cli
from tagger.engine.decode import preprocess
from tagger.engine.weights import LITE_PREPROCESS

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def composite(sample_paths: dict[str, Path], side: int = 448) -> Image.Image:
    """A square: the cat photo (chelsea) in the left half, the coffee cup (coffee) in the right,
    each cut to a centred half-width slice of the same height."""
    canvas = Image.new("RGB", (side, side))
    for name, left in (("chelsea", 0), ("coffee", side // 2)):
        with Image.open(sample_paths[name]) as img:
            photo = img.convert("RGB")
        scale = side / photo.height
        photo = photo.resize((round(photo.width * scale), side), Image.Resampling.BICUBIC)
        offset = (photo.width - side // 2) // 2
        canvas.paste(photo.crop((offset, 0, offset + side // 2, side)), (left, 0))
    return canvas


def halves(explanation: cam.Explanation) -> tuple[float, float]:
    """The map's mass in the left and right half of the photo (positive evidence only)."""
    heat = np.nan_to_num(explanation.heat(64, 64))
    return float(heat[:, :32].sum()), float(heat[:, 32:].sum())


def test_cat_on_the_left_coffee_on_the_right(lite0: Classifier, sample_paths: dict[str, Path]) -> None:
    image = composite(sample_paths)
    top = cam.explain(lite0, image)
    cat = max((cam.explain(lite0, image, str(c)) for c in CAT_CLASSES), key=lambda e: e.score)
    espresso = cam.explain(lite0, image, "espresso")
    assert espresso.class_id == ESPRESSO and cat.class_id in CAT_CLASSES
    assert top.class_id in (*CAT_CLASSES, ESPRESSO, 504)  # the model sees both things
    cat_left, cat_right = halves(cat)
    cup_left, cup_right = halves(espresso)
    assert cat_left > 2 * cat_right, (cat.label, cat_left, cat_right)
    assert cup_right > 2 * cup_left, (cup_left, cup_right)


def test_the_map_sums_to_the_logit(lite0: Classifier, sample_paths: dict[str, Path]) -> None:
    """Global average pooling then one linear layer: the mean of a class's map plus its bias is its
    logit, for every class; and the scan's logits-only run gives the same logits."""
    with Image.open(sample_paths["chelsea"]) as img:
        batch = preprocess(img.convert("RGB"), lite0.spec.preprocess)[None]
    assert lite0.with_map is not None
    logits, fmaps = lite0.with_map(batch)
    assert fmaps.shape == (1, lite0.head.weight.shape[1], 7, 7)
    maps = np.stack([cam.activation_map(fmaps[0], row) for row in lite0.head.weight])
    np.testing.assert_allclose(maps.mean(axis=(1, 2)) + lite0.head.bias, logits[0], atol=2e-3)
    np.testing.assert_allclose(lite0.network(batch)[0], logits, atol=1e-5)


def test_onnx_and_pytorch_give_the_same_feature_map(lite0: Classifier, lite0_torch: Classifier,
                                                    sample_paths: dict[str, Path]) -> None:
    with Image.open(sample_paths["coffee"]) as img:
        batch = preprocess(img.convert("RGB"), lite0.spec.preprocess)[None]
    assert lite0.with_map is not None and lite0_torch.with_map is not None
    np.testing.assert_allclose(lite0.with_map(batch)[1], lite0_torch.with_map(batch)[1], atol=1e-3)
    np.testing.assert_array_equal(lite0.head.weight, lite0_torch.head.weight)


def test_a_learned_tags_weights_give_its_map(lite0: Classifier, sample_paths: dict[str, Path]) -> None:
    """A linear model over the (L2-normalised) pooled features explains itself the same way: here
    one whose weights are a scaled copy of espresso's row gives espresso's map."""
    with Image.open(sample_paths["coffee"]) as img:
        photo = img.convert("RGB")
    view = cam.look_at(lite0, photo)
    learned_weights = 7.5 * lite0.head.weight[ESPRESSO] / np.linalg.norm(view.pooled)
    learned = cam.explain_weights(view, learned_weights, "my espresso", "我的咖啡", 0.9)
    espresso = cam.explain(lite0, photo, "espresso")
    assert learned.class_id is None and learned.as_dict()["label"] == "my espresso"
    np.testing.assert_allclose(learned.heat(48, 32), espresso.heat(48, 32), atol=1e-6)
    stored = cam.explain_learned(view, "mine", learned_weights, -1.0)  # as tagger.vectors.learned scores it
    unit = view.pooled / np.linalg.norm(view.pooled)
    assert stored.label == "learned/mine" and stored.score == pytest.approx(1 / (1 + np.exp(1.0 - unit @ learned_weights)))
    with pytest.raises(cam.ExplainError, match="has 3 weights"):
        cam.explain_learned(view, "wrong", np.ones(3, np.float32), 0.0)


def test_any_weight_vector_gives_a_map() -> None:
    """Each cell's share of the score weights . mean(feature map)."""
    fmap = np.zeros((4, 7, 7), np.float32)
    fmap[2, 1, 5] = 1.0
    weights = np.array([0.0, 0.0, 3.0, -1.0], np.float32)
    result = cam.activation_map(fmap, weights)
    assert result.shape == (7, 7) and result[1, 5] == 3.0 and result.sum() == 3.0
    with pytest.raises(cam.ExplainError, match="do not fit"):
        cam.activation_map(fmap, np.ones(5, np.float32))


def test_the_map_lies_where_the_centre_crop_lies() -> None:
    """A 4000 x 3000 photo: the model saw the middle 3/4 of its width and 7/8 of its height."""
    box = cam.seen_box(4000, 3000, LITE_PREPROCESS)
    assert box.top == pytest.approx(3000 * 16 / 256) and box.bottom == pytest.approx(3000 * 240 / 256)
    assert box.left == pytest.approx(58 * 4000 / 341) and box.right == pytest.approx(282 * 4000 / 341)
    hot = np.zeros((7, 7))
    hot[0, 0] = 1.0  # the crop's top left cell
    grid = cam.on_grid(hot, box, 4000, 3000, 400, 300)
    seen = np.argwhere(~np.isnan(grid))  # cells of 10 x 10 pixels whose centre lies in the crop
    assert seen.min(axis=0).tolist() == [19, 68] and seen.max(axis=0).tolist() == [280, 330]
    assert np.isnan(grid[:19]).all() and np.isnan(grid[:, :68]).all() and np.isnan(grid[281:]).all()
    peak = np.unravel_index(np.nanargmax(grid), grid.shape)
    assert 19 <= peak[0] <= 19 + 262 // 7 and 68 <= peak[1] <= 68 + 262 // 7  # in the crop's top left cell
    portrait = cam.seen_box(3000, 4000, LITE_PREPROCESS)
    assert portrait.left == pytest.approx(box.top) and portrait.top == pytest.approx(box.left)


def test_overlay_marks_what_was_not_seen(lite0: Classifier, sample_paths: dict[str, Path]) -> None:
    with Image.open(sample_paths["coffee"]) as img:
        photo = img.convert("RGB")
    explanation = cam.explain(lite0, photo)
    layer = cam.heat_layer(explanation, 300)
    assert layer.size == (300, 200) and layer.mode == "RGBA"
    alpha = np.asarray(layer)[..., 3]
    assert alpha[:, 0].max() == 0 and alpha[100, 150] == 255  # left edge outside the crop, centre inside
    shown = np.asarray(cam.overlay(explanation, photo, 300))
    assert shown.shape == (200, 300, 3)
    data = explanation.as_dict()
    assert len(data["map"]) == 32 and len(data["map"][0]) == 48  # type: ignore[arg-type]
    assert data["map"][16][0] is None and data["map"][16][24] is not None  # type: ignore[index]


def test_an_old_export_is_made_again(lite0: Classifier, weights_dir: Path, tmp_path: Path) -> None:
    """A cached export without the feature map (format 1, or no head file) is not used."""
    path = onnx_cache_path(lite0.spec, lite0.weights, weights_dir, "fp32")
    copy = tmp_path / path.name
    for suffix in ("", ".json", ".head.npz"):
        shutil.copy(path.with_name(path.name + suffix), copy.with_name(copy.name + suffix))
    assert cached_export_is_current(copy, lite0.weights, "fp32")
    meta_path = copy.with_name(copy.name + ".json")
    meta = json.loads(meta_path.read_text())
    assert meta["format"] == EXPORT_FORMAT and meta["outputs"] == ["logits", "features", "feature_map"]
    meta_path.write_text(json.dumps({**meta, "format": EXPORT_FORMAT - 1}))
    assert not cached_export_is_current(copy, lite0.weights, "fp32")
    meta_path.write_text(json.dumps(meta))
    copy.with_name(copy.name + ".head.npz").write_bytes(b"changed")
    assert not cached_export_is_current(copy, lite0.weights, "fp32")


def test_agrees_with_grad_cam(lite0: Classifier, lite0_torch: Classifier, sample_paths: dict[str, Path]) -> None:
    """Grad-CAM (the grad-cam package, PyTorch gradients) on every sample photo's top guess:
    the correlation with tagger's map (ONNX Runtime) over the 224 x 224 crop is reported and must be high."""
    import torch

    from tagger.engine.torchnet import load_with_features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrapped = load_with_features(lite0_torch.spec, lite0_torch.weights)

    class Probe(torch.nn.Module):
        """The same network, with a layer at the feature map for Grad-CAM to hook."""

        def __init__(self) -> None:
            super().__init__()
            self.wrapped = wrapped
            self.at_map = torch.nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fmap = self.at_map(self.wrapped.feature_map(x))
            logits: torch.Tensor = self.wrapped.classifier(torch.flatten(self.wrapped.pool(fmap), 1))
            return logits

    probe = Probe().eval()
    correlations = {}
    for name, path in sample_paths.items():
        with Image.open(path) as img:
            photo = img.convert("RGB")
        explanation = cam.explain(lite0, photo)
        crop = cam.Box(0, 0, 224, 224)
        ours = cam.normalised(cam.on_grid(explanation.cam, crop, 224, 224, 224, 224))
        batch = torch.from_numpy(preprocess(photo, lite0_torch.spec.preprocess)[None])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with GradCAM(model=probe, target_layers=[probe.at_map]) as grad_cam:
                theirs = grad_cam(input_tensor=batch, targets=[ClassifierOutputTarget(explanation.class_id)])[0]
        correlations[name] = float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
    print("Grad-CAM correlation per photo:", {k: round(v, 6) for k, v in correlations.items()})
    assert min(correlations.values()) > 0.95, correlations


@pytest.fixture
def config_file(write_config: Callable[..., Path]) -> Path:
    return write_config()


def test_cli_explain_json(config_file: Path, sample_jpegs: list[Path]) -> None:
    coffee = next(p for p in sample_jpegs if p.stem == "coffee")
    result = CliRunner().invoke(cli, ["--config", str(config_file), "explain", "--json", "--tag", "意式浓缩咖啡", str(coffee)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"label", "class_id", "score", "map"} <= set(data)
    assert data["label"] == "espresso" and data["class_id"] == ESPRESSO and 0 < data["score"] <= 1
    with Image.open(coffee) as img:
        width, height = img.size
    assert len(data["map"]) == 32 and len(data["map"][0]) == round(32 * width / height)
    values = [v for row in data["map"] for v in row if v is not None]
    assert min(values) >= 0 and max(values) == 1


def test_cli_explain_text_and_png(config_file: Path, sample_jpegs: list[Path], tmp_path: Path) -> None:
    chelsea = next(p for p in sample_jpegs if p.stem == "chelsea")
    out = tmp_path / "why.png"
    result = CliRunner().invoke(cli, ["--config", str(config_file), "explain", "--out", str(out), str(chelsea)])
    assert result.exit_code == 0, result.output
    assert "cat" in result.output and "overlay written" in result.output
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] == 451


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tag", "no such thing"], "no ImageNet class is called 'no such thing'"),
        (["--tag", "1000"], "no ImageNet class is called '1000'"),
        (["--tag", "espreso"], "did you mean 'espresso'"),
    ],
)
def test_cli_explain_refuses_unknown_tags(config_file: Path, sample_jpegs: list[Path], args: list[str],
                                          message: str) -> None:
    result = CliRunner().invoke(cli, ["--config", str(config_file), "explain", *args, str(sample_jpegs[0])])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_cli_explain_bad_image_names_the_file(config_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    for path in (broken, tmp_path / "missing.jpg", tmp_path):
        result = CliRunner().invoke(cli, ["--config", str(config_file), "explain", str(path)])
        assert result.exit_code == 1, result.output
        assert f"tagger: error: {path}" in result.output and "Traceback" not in result.output
    out = tmp_path / "no-such-folder" / "x.png"
    result = CliRunner().invoke(cli, ["--config", str(config_file), "explain", "--out", str(out), str(broken)])
    assert result.exit_code == 1 and "broken.jpg" in result.output


@pytest.mark.parametrize(("name", "channels"), [("resnet18", 512), ("efficientnet-lite0", 1280)])
def test_feature_outputs_leave_the_logits_unchanged(name: str, channels: int) -> None:
    """Both architectures (untrained weights: ResNet-18's real file is not needed for this)."""
    import torch

    from tagger.engine.torchnet import WithFeatures, build_network

    torch.manual_seed(0)
    network = build_network(name).eval()
    batch = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = network(batch)
        logits, features, fmap = WithFeatures(network, name).eval()(batch)
    assert fmap.shape == (2, channels, 7, 7) and features.shape == (2, channels)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(features, fmap.mean(dim=(2, 3)))


def test_cli_explains_a_learned_tag(tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path]) -> None:
    """Taught from the coffee photo, `mycup` is explained like a class, by its own weights."""
    library = tmp_path / "library"
    library.mkdir()
    for photo in sample_jpegs:
        shutil.copy(photo, library / photo.name)
    config = str(write_config([library]))
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", config, "scan"]).exit_code == 0
    coffee = library / "coffee.jpg"
    taught = runner.invoke(cli, ["--config", config, "learn", "mycup", str(coffee), "--not", str(library / "rocket.jpg")])
    assert taught.exit_code == 0, taught.output
    result = runner.invoke(cli, ["--config", config, "explain", "--json", "--tag", "learned/mycup", str(coffee)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["label"] == "learned/mycup" and data["class_id"] is None and 0 < data["score"] <= 1
    assert max(v for row in data["map"] for v in row if v is not None) == 1
    unknown = runner.invoke(cli, ["--config", config, "explain", "--tag", "learned/nothing", str(coffee)])
    assert unknown.exit_code == 1 and "no learned tag 'nothing'" in unknown.output
