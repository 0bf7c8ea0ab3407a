"""The three units under a real systemd: PID 1 of a podman container, installed by systemd/install.sh.

The container is the image of `make image` (tagger and its exported model in /opt/venv) with systemd
added; install.sh runs in it as on a server, with --venv naming that environment. Each unit starts and
reports ready through sd_notify, feeds its watchdog, and stops cleanly; the daemon tags a dropped
photo and reloads; the viewer answers /health, also after the daemon has stopped and closed the index
(ReadOnlyPaths= on the index folder). MemoryDenyWriteExecute=, SystemCallFilter= and
ProtectSystem=strict apply here; PrivateNetwork= does not in a container.
"""
from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_container import LIMITS, engine, image, run  # noqa: F401  (image: the fixture that builds it)

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD_IMAGE = "localhost/tagger-systemd-test:latest"
CONTAINERFILE = """\
FROM {image}
USER root
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends systemd systemd-sysv acl procps \\
    && rm -rf /var/lib/apt/lists/* /etc/tagger/tagger.yaml \\
    && systemctl mask systemd-logind.service getty.target console-getty.service
COPY src /src
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
"""


def sh(name: str, command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("exec", name, "bash", "-c", command, timeout=timeout, check=check)


def wait_for(name: str, command: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = sh(name, command, check=False)
        if result.returncode == 0:
            return result.stdout
        if time.monotonic() > deadline:
            journal = sh(name, "journalctl --no-pager -n 80", check=False).stdout
            raise AssertionError(f"{command!r} never succeeded:\n{result.stdout}{result.stderr}\n{journal}")
        time.sleep(1)


def show(name: str, unit: str, *props: str) -> dict[str, str]:
    out = sh(name, f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def booted(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    context = tmp_path_factory.mktemp("systemd-image")
    src = context / "src"
    for part in ("systemd", "config", "docs"):
        shutil.copytree(ROOT / part, src / part)
    shutil.copy(ROOT / "README.md", src / "README.md")
    (context / "Containerfile").write_text(CONTAINERFILE.format(image=image))
    flags = ["--format", "docker", *LIMITS]
    run("build", *flags, "-t", SYSTEMD_IMAGE, "-f", str(context / "Containerfile"), str(context), timeout=600)
    name = f"tagger-systemd-{secrets.token_hex(4)}"
    run("run", "-d", "--name", name, "--systemd=always", *LIMITS, SYSTEMD_IMAGE)
    try:
        state = wait_for(name, "systemctl is-system-running --wait | grep -E 'running|degraded'", 90)
        print(f"systemd in the container: {state.strip()}")
        yield name
    finally:
        run("rm", "-f", "-t", "5", name, check=False)


def test_daemon_and_viewer_as_install_sh_sets_them_up(booted: str, sample_jpegs: list[Path]) -> None:
    name = booted
    coffee = next(p for p in sample_jpegs if p.stem == "coffee")
    sh(name, "mkdir -p /srv/photos")
    run("cp", str(coffee), f"{name}:/srv/photos/first.jpg")
    # a watchdog short enough to see it fed within the test (the units ask for 300 and 120 s)
    sh(name, "for u in tagger tagger-web; do mkdir -p /etc/systemd/system/$u.service.d; "
             "printf '[Service]\\nWatchdogSec=6\\n' > /etc/systemd/system/$u.service.d/test.conf; done")
    installed = sh(name, "/src/systemd/install.sh --venv /opt/venv --with-web /srv/photos", timeout=300, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    for unit in ("tagger", "tagger-web"):
        state = show(name, unit, "ActiveState", "SubState", "Type", "StatusText", "WatchdogUSec", "NRestarts")
        assert state["ActiveState"] == "active" and state["Type"] == "notify", state  # READY=1 arrived
        assert state["StatusText"], state  # and STATUS= with it
    wait_for(name, "test -s /srv/photos/first.jpg.tags.json", 60)
    run("cp", str(coffee), f"{name}:/srv/photos/dropped.jpg")
    wait_for(name, "grep -q espresso /srv/photos/dropped.jpg.tags.json", 60)

    before = {u: show(name, u, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"] for u in ("tagger", "tagger-web")}
    time.sleep(8)
    for unit in ("tagger", "tagger-web"):
        after = show(name, unit, "WatchdogTimestampMonotonic", "NRestarts", "ActiveState")
        assert after["WatchdogTimestampMonotonic"] != before[unit] and after["NRestarts"] == "0", (unit, after)
    assert sh(name, "TAGGER_CONFIG=/etc/tagger/tagger.yaml /opt/venv/bin/tagger health --web").stdout.startswith("ok")

    sh(name, "systemctl reload tagger")
    wait_for(name, "journalctl -u tagger --no-pager -o cat | grep -q 'reloaded /etc/tagger/tagger.yaml'", 30)
    assert show(name, "tagger", "ActiveState")["ActiveState"] == "active"

    sh(name, "systemctl stop tagger", timeout=120)
    stopped = show(name, "tagger", "Result", "ExecMainStatus", "ActiveState")
    assert stopped == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}, stopped
    sh(name, "systemctl restart tagger-web")  # opens the closed index in its read-only folder
    wait_for(name, "TAGGER_CONFIG=/etc/tagger/tagger.yaml /opt/venv/bin/tagger health --web", 60)

    # the one expected refusal: a container cannot make a network namespace (PrivateNetwork= is ignored)
    journal = "\n".join(line for line in sh(name, "journalctl --no-pager -o cat").stdout.splitlines()
                         if "PrivateNetwork=yes is configured, but network namespace setup failed" not in line)
    for denial in ("SECCOMP", "seccomp", "Operation not permitted", "memory protection", "Bad system call"):
        assert denial not in journal, [line for line in journal.splitlines() if denial in line][:5]


def test_worker_as_install_sh_sets_it_up(booted: str) -> None:
    name = booted
    sh(name, "systemd-run --unit=dask-scheduler --property=User=nobody "
             "/opt/venv/bin/dask scheduler --host 127.0.0.1 --port 8786 --dashboard-address :0")
    wait_for(name, "/opt/venv/bin/python -c \"import socket; socket.create_connection(('127.0.0.1', 8786), 2)\"", 60)
    sh(name, "mkdir -p /etc/systemd/system/tagger-worker.service.d; "
             "printf '[Service]\\nWatchdogSec=6\\n' > /etc/systemd/system/tagger-worker.service.d/test.conf")
    installed = sh(name, "/src/systemd/install.sh --venv /opt/venv --worker tcp://127.0.0.1:8786", timeout=300, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    wait_for(name, "systemctl show tagger-worker -p ActiveState | grep -q =active", 90)
    state = show(name, "tagger-worker", "Type", "StatusText", "NRestarts")
    assert state["Type"] == "notify" and "joined" in state["StatusText"], state
    first = show(name, "tagger-worker", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
    time.sleep(8)
    after = show(name, "tagger-worker", "WatchdogTimestampMonotonic", "NRestarts")
    assert after["WatchdogTimestampMonotonic"] != first and after["NRestarts"] == "0", after
    sh(name, "systemctl stop tagger-worker", timeout=90)
    stopped = show(name, "tagger-worker", "Result", "ExecMainStatus")
    assert stopped == {"Result": "success", "ExecMainStatus": "0"}, stopped
