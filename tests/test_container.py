"""The container image, built (`make image`: scripts/build-image.sh) and run with podman as a NAS runs it.

A mounted library is tagged by a non-root user (the photos' owner) with a read-only root filesystem,
the viewer answers /health through a published port, the daemon stops on SIGTERM within 10 s with
exit 0, and PyTorch is not in the image. CI installs podman, runc and mmdebstrap
(scripts/install-system-deps.sh); the build takes a few minutes the first time, seconds after.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import built_image

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/tagger:latest"
OWNER = (4321, 4321)  # the photos' owner on the "NAS", not the image's own user (10001)


def engine() -> list[str]:
    podman = shutil.which("podman")
    if podman is None:
        if os.environ.get("CI"):
            pytest.fail("podman is not installed, and CI must install it (scripts/install-system-deps.sh)")
        pytest.skip("podman is not installed here (scripts/install-system-deps.sh installs it)")
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    return [podman, *runtime]


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*engine(), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


@pytest.fixture(scope="module")
def image() -> str:
    """tagger:latest, built by `make image`'s script: started in the background when the tests were
    collected (conftest.py), its layers cached (seconds when nothing changed)."""
    engine()
    started = time.monotonic()
    code, log = built_image()
    assert code == 0, log[-6000:]
    summary = [line for line in log.splitlines() if line.startswith("build-image: tagger")]
    print(f"waited {time.monotonic() - started:.0f} s for the image: {summary[-1] if summary else ''}")
    return IMAGE


@pytest.fixture
def library(tmp_path: Path, sample_jpegs: list[Path]) -> Iterator[tuple[Path, Path]]:
    """A library and an index folder owned by OWNER, as on a NAS."""
    photos, index = tmp_path / "photos", tmp_path / "index"
    (photos / "2024").mkdir(parents=True)
    index.mkdir()
    for photo in sample_jpegs[:3]:
        shutil.copy(photo, photos / "2024" / photo.name)
    for path in [photos, index, *photos.rglob("*")]:
        os.chown(path, *OWNER)
    yield photos, index


def mounts(photos: Path, index: Path) -> list[str]:
    return ["-v", f"{photos}:/photos", "-v", f"{index}:/var/lib/tagger"]


def test_torch_is_not_in_the_image_and_onnx_runtime_is(image: str) -> None:
    result = run("run", "--rm", *LIMITS, image, "python3", "-c",
                 "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)")
    assert result.stdout.split() == ["None", "True"], result.stdout
    size = int(run("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"image size: {size / 1e6:.0f} MB")


def test_a_mounted_library_is_tagged_as_the_photos_owner_with_a_read_only_root(
    image: str, library: tuple[Path, Path]
) -> None:
    photos, index = library
    user = f"{OWNER[0]}:{OWNER[1]}"
    run("run", "--rm", *LIMITS, "--user", user, "--read-only", "--tmpfs", "/tmp", *mounts(photos, index),
        image, "tagger", "scan", timeout=300)
    sidecars = sorted((photos / "2024").glob("*.tags.json"))
    assert len(sidecars) == 3
    assert all((s.stat().st_uid, s.stat().st_gid) == OWNER for s in sidecars)
    assert (index / "tagger.sqlite").stat().st_uid == OWNER[0]
    coffee = json.loads((photos / "2024" / "coffee.jpg.tags.json").read_text())
    assert coffee["tags"][0]["label"] == "espresso"


def test_a_read_only_library_gets_its_sidecars_in_the_index_volume(image: str, library: tuple[Path, Path]) -> None:
    photos, index = library
    config = index / "ro.yaml"
    config.write_text((ROOT / "config" / "tagger.yaml").read_text()
                      .replace("  - ../photos", "  - /photos")
                      .replace("index: ../var/tagger.sqlite", "index: /var/lib/tagger/tagger.sqlite")
                      .replace("weights_dir: ../weights", "weights_dir: /opt/tagger/weights")
                      .replace("  folder: null", "  folder: /var/lib/tagger/sidecars"))
    before = sorted(p.name for p in photos.rglob("*"))
    run("run", "--rm", *LIMITS, "--user", f"{OWNER[0]}:{OWNER[1]}", "--read-only", "--tmpfs", "/tmp",
        "-v", f"{photos}:/photos:ro", "-v", f"{index}:/var/lib/tagger", "-e", "TAGGER_CONFIG=/var/lib/tagger/ro.yaml",
        image, "tagger", "scan", timeout=300)
    assert sorted(p.name for p in photos.rglob("*")) == before
    assert len(list((index / "sidecars" / "photos" / "2024").glob("*.tags.json"))) == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_viewer_answers_health_through_a_published_port(image: str, library: tuple[Path, Path]) -> None:
    photos, index = library
    user = f"{OWNER[0]}:{OWNER[1]}"
    run("run", "--rm", *LIMITS, "--user", user, *mounts(photos, index), image, "tagger", "scan", timeout=300)
    port = free_port()
    name = f"tagger-viewer-{secrets.token_hex(4)}"
    run("run", "-d", "--name", name, *LIMITS, "--user", f"{OWNER[0]}:{OWNER[1]}", "--read-only", "--tmpfs", "/tmp",
        *mounts(photos, index), "-p", f"127.0.0.1:{port}:8765", "-e", f"TAGGER_WEB_TOKEN={secrets.token_hex(16)}",
        image, "tagger", "serve", "--host", "0.0.0.0")
    try:
        deadline, answer = time.monotonic() + 60, None
        while time.monotonic() < deadline and answer is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    answer = (response.status, response.read().decode())
            except OSError:
                time.sleep(0.5)
        assert answer is not None and answer[0] == 200, run("logs", name, check=False).stderr
        with pytest.raises(urllib.error.HTTPError) as refused:  # the token is on: pages need it
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert refused.value.code in (401, 403)
        refused.value.close()
        inside = run("exec", name, "tagger", "health", "--web")
        assert inside.stdout.startswith("ok:")
    finally:
        run("rm", "-f", "-t", "0", name, check=False)


def test_the_daemon_is_healthy_then_stops_on_sigterm_within_10_s_with_exit_0(
    image: str, library: tuple[Path, Path]
) -> None:
    photos, index = library
    name = f"tagger-daemon-{secrets.token_hex(4)}"
    run("run", "-d", "--name", name, *LIMITS, "--user", f"{OWNER[0]}:{OWNER[1]}", "--read-only", "--tmpfs", "/tmp",
        *mounts(photos, index), image)
    try:
        deadline = time.monotonic() + 120
        while run("exec", name, "tagger", "health", check=False).returncode != 0:
            assert time.monotonic() < deadline, run("logs", name, check=False).stderr
            time.sleep(1)
        deadline = time.monotonic() + 120
        while len(list((photos / "2024").glob("*.tags.json"))) < 3:
            assert time.monotonic() < deadline, run("logs", name, check=False).stderr
            time.sleep(1)
        started = time.monotonic()
        run("stop", "-t", "10", name, timeout=60)
        stopped = time.monotonic() - started
        code = run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0" and stopped < 10, (code, stopped, run("logs", name, check=False).stderr[-2000:])
    finally:
        run("rm", "-f", "-t", "0", name, check=False)


def test_compose_runs_the_daemon_and_the_viewer_on_a_mounted_library(
    image: str, library: tuple[Path, Path], tmp_path: Path
) -> None:
    """compose.yaml as a NAS user starts it (podman-compose here; docker compose reads the same file)."""
    compose = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if not Path(compose).exists():
        pytest.fail("podman-compose is not installed (pip install -e '.[test]' installs it)")
    photos, _ = library
    port = free_port()
    project = f"tagger-compose-{secrets.token_hex(4)}"
    settings = tmp_path / "containers.conf"  # this machine's podman: runc, and its lower hard limits
    settings.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                        '[engine]\nruntime = "runc"\n')
    env = {**os.environ, "CONTAINERS_CONF": str(settings), "TAGGER_WEB_TOKEN": secrets.token_hex(16),
           "PHOTOS": str(photos), "PUID": str(OWNER[0]), "PGID": str(OWNER[1]), "VIEWER_PORT": str(port)}
    base = [compose, "-f", str(ROOT / "compose.yaml"), "-p", project]
    up = subprocess.run([*base, "up", "-d"], capture_output=True, text=True, timeout=300, env=env)
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        deadline = time.monotonic() + 180
        while len(list((photos / "2024").glob("*.tags.json"))) < 3:
            assert time.monotonic() < deadline, "the daemon tagged nothing"
            time.sleep(1)
        status = None
        while status != 200 and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    status = response.status
            except OSError:
                time.sleep(1)
        assert status == 200
        owners = {(p.stat().st_uid, p.stat().st_gid) for p in (photos / "2024").glob("*.tags.json")}
        assert owners == {OWNER}
    finally:
        subprocess.run([*base, "down", "-v", "-t", "10"], capture_output=True, text=True, timeout=120, env=env)
