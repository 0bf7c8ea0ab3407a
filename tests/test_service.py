"""Running as a service: the systemd unit, sd_notify messages, journal priorities, health, Dockerfile."""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tagger.daemon.systemd import JournalFormatter, Notifier

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "tagger.service"
WEB_UNIT = ROOT / "systemd" / "tagger-web.service"
WORKER_UNIT = ROOT / "systemd" / "tagger-worker.service"
EXPOSURE_GOALS = {UNIT: 1.0, WEB_UNIT: 1.5, WORKER_UNIT: 1.0}  # systemd-analyze security: 0 is the tightest, 10 the loosest
TAGGER = str(Path(sys.executable).parent / "tagger")


def need(tool: str) -> str:
    """CI installs every tool its tests use (make test does); a developer may lack one."""
    path = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed, and CI must install it")
        pytest.skip(f"{tool} is not installed here (make test installs it)")
    return path


def unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("source", [UNIT, WEB_UNIT, WORKER_UNIT], ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, source: Path) -> None:
    analyze = need("systemd-analyze")
    unit = tmp_path / source.name
    unit.write_text(source.read_text().replace("/opt/tagger/.venv/bin/tagger", TAGGER))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert source.name not in result.stderr, result.stderr


@pytest.mark.parametrize("source", [UNIT, WEB_UNIT, WORKER_UNIT], ids=lambda p: p.name)
def test_unit_exposure_is_within_its_goal_and_every_gap_is_explained(tmp_path: Path, source: Path) -> None:
    analyze = need("systemd-analyze")
    unit = tmp_path / source.name
    unit.write_text(source.read_text())
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", unit.name], capture_output=True, text=True, cwd=tmp_path
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"{source.name}: exposure {exposure}")
    assert exposure <= EXPOSURE_GOALS[source], result.stdout
    comments = "\n".join(line for line in source.read_text().splitlines() if line.startswith("#"))
    gaps = re.findall(r"^✗ (\S+?)=", result.stdout, flags=re.MULTILINE)
    for setting in gaps:
        assert f"{setting}=" in comments, f"{source.name}: why {setting}= is not set is not explained in a comment"


def test_web_unit_reads_the_library_and_index_only() -> None:
    s = unit_settings(WEB_UNIT)
    assert s["ExecStart"] == ["/opt/tagger/.venv/bin/tagger serve"] and s["User"] == ["tagger"]
    read_only = s["ReadOnlyPaths"][0].split()
    assert "/srv/photos" in read_only and "/var/lib/tagger" in read_only
    assert s["ReadWritePaths"] == ["-/var/lib/tagger/tagger.sqlite.thumbs"]  # the thumbnail cache alone
    assert s["MemoryDenyWriteExecute"] == ["yes"] and s["IPAddressDeny"] == ["any"]
    assert "StateDirectory" not in s  # the daemon owns the index


def test_worker_unit_runs_a_worker_with_no_photos_no_index_and_local_networks_only() -> None:
    s = unit_settings(WORKER_UNIT)
    assert s["ExecStart"] == ["/opt/tagger/.venv/bin/tagger worker ${TAGGER_SCHEDULER}"] and s["User"] == ["tagger"]
    assert s["EnvironmentFile"] == ["-/etc/tagger/worker.env"]
    assert s["RestartPreventExitStatus"] == ["2"]  # a refused model is not fixed by restarting
    assert "ReadWritePaths" not in s and "StateDirectory" not in s  # no photos, no index
    assert s["MemoryDenyWriteExecute"] == ["yes"] and s["IPAddressDeny"] == ["any"]
    assert "0.0.0.0/0" not in s["IPAddressAllow"][0] and "192.168.0.0/16" in s["IPAddressAllow"][0]


def test_installer_can_add_the_viewer_and_prepares_the_model() -> None:
    bash = need("bash")
    script = ROOT / "systemd" / "install.sh"
    assert subprocess.run([bash, "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "--with-web" in text and "tagger-web.service" in text and "weights prepare" in text
    help_text = subprocess.run([bash, str(script), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--with-web" in help_text.stdout
    assert "--worker ADDRESS" in help_text.stdout and "tagger-worker.service" in text


def test_unit_is_notify_hardened_and_polite() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"] and "WatchdogSec" in s and s["Restart"] == ["on-failure"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key, value in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("User", "tagger"),
        ("StateDirectory", "tagger"),
        ("IOSchedulingClass", "idle"),
    ]:
        assert s[key] == [value], key
    assert "ReadWritePaths" in s and "Nice" in s
    for key, value in [
        ("MemoryDenyWriteExecute", "yes"),  # the ONNX export is made at install time: no PyTorch JIT
        ("PrivateNetwork", "yes"),
        ("IPAddressDeny", "any"),
        ("RestrictAddressFamilies", "AF_UNIX"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("RemoveIPC", "yes"),
        ("UMask", "0027"),
    ]:
        assert s[key] == [value], key
    assert "@system-service" in s["SystemCallFilter"]


def test_prepared_model_tags_without_torch_under_memory_deny_write_execute(
    tmp_path: Path, sample_jpegs: list[Path], weights_dir: Path
) -> None:
    """What MemoryDenyWriteExecute=yes does to the service, done with the kernel's own switch
    (prctl PR_SET_MDWE): after `tagger weights prepare`, a scan tags without PyTorch."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(next(p for p in sample_jpegs if p.stem == "coffee"), lib / "coffee.jpg")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "folders": [str(lib)], "index": str(tmp_path / "i.sqlite"), "weights_dir": str(weights_dir),
        "model": {"name": "efficientnet-lite0", "fallback": None},
    }))
    prepared = subprocess.run([TAGGER, "--config", str(config), "weights", "prepare"], capture_output=True, text=True)
    assert prepared.returncode == 0 and "ready" in prepared.stdout, prepared.stderr
    locked = (
        "import ctypes, sys\n"
        "import mmap\n"
        "if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0: sys.exit(77)  # PR_SET_MDWE, REFUSE_EXEC_GAIN\n"
        "try:\n    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n    pass\nelse:\n    sys.exit('writable+executable memory is still allowed')\n"
        "from tagger.cli import cli\n"
        "try:\n    cli(['--config', sys.argv[1], 'scan'], prog_name='tagger')\n"
        "finally:\n    print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", locked, str(config)], capture_output=True, text=True)
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stderr and "1 classified" in result.stdout, result.stdout + result.stderr


def test_journal_formatter_prefixes_priorities() -> None:
    formatter = JournalFormatter("%(message)s")
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "bad\nsecond line", None, None)
    assert formatter.format(record) == "<3>bad\n<3>second line"
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "fine", None, None)
    assert formatter.format(record) == "<6>fine"


def test_notifier_is_silent_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier().notify("READY=1") is False


def test_real_daemon_talks_to_systemd(tmp_path: Path, sample_jpegs: list[Path], weights_dir: Path) -> None:
    """READY, STATUS, WATCHDOG, RELOADING, STOPPING, over a real notify socket; journal prefixes; health."""
    lib = tmp_path / "lib"
    lib.mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "folders": [str(lib)],
                "index": str(tmp_path / "index.sqlite"),
                "weights_dir": str(weights_dir),
                "model": {"name": "efficientnet-lite0", "fallback": None},
                "watch": {"stable_seconds": 0.3},
            }
        )
    )
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000", "JOURNAL_STREAM": "8:1234"}
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen([TAGGER, "--config", str(config), "run"], stderr=out, env=env)
    messages: list[str] = []

    def receive_until(word: str) -> None:
        while not any(word in m for m in messages):
            messages.append(sock.recv(4096).decode())

    try:
        receive_until("READY=1")
        assert "STATUS=reconciling: " in messages[-1] and "; queue " in messages[-1]  # READY at once, not up to date yet
        health = subprocess.run([TAGGER, "--config", str(config), "health"], capture_output=True, text=True)
        assert health.returncode == 0, health.stderr
        shutil.copy(sample_jpegs[0], lib / "a.jpg")
        receive_until("1 classified")
        receive_until("WATCHDOG=1")
        proc.send_signal(signal.SIGHUP)
        receive_until("RELOADING=1")
        messages.clear()
        receive_until("READY=1")
        proc.send_signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    stderr = log.read_text()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>", "<2>") for line in lines), stderr
    health = subprocess.run([TAGGER, "--config", str(config), "health"], capture_output=True, text=True)
    assert health.returncode == 1 and "stopped" in health.stderr


def test_health_without_a_daemon_fails(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"folders: []\nindex: {tmp_path / 'i.sqlite'}\n")
    result = subprocess.run([TAGGER, "--config", str(config), "health"], capture_output=True, text=True)
    assert result.returncode == 1 and "has not started" in result.stderr


def test_dockerfile_lints_clean() -> None:
    hadolint = need("hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_daemon_as_non_root_with_volumes_and_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in text
    assert 'VOLUME ["/photos", "/var/lib/tagger"]' in text
    assert 'CMD ["tagger", "health"]' in text and "HEALTHCHECK" in text
    assert "download.pytorch.org/whl/cpu" in text  # CPU-only torch
    assert "weights fetch resnet18" in text  # weights at build time, never at run time
    assert "tagger weights prepare" in text  # and the ONNX export: the container never loads PyTorch
    assert "runtime_requirements.py setup.cfg cluster" in text  # it can run as a worker (compose.yaml)
    assert text.count("FROM ${BASE_IMAGE}") == 2  # PyTorch stays in the build stage
