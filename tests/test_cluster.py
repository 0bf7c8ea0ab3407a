"""Tagging on a Dask cluster: a real scheduler and real `tagger worker` processes on 127.0.0.1.

No image lost or tagged twice when a worker, the coordinator or the scheduler dies mid-run;
the same top-1 as a local run; TLS that refuses a stranger; a worker with other weights refuses.
Every process started here is stopped here; every wait is bounded.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tagger.engine.classify import Classifier
from tagger.config import ClusterConfig, load_config
from tagger.cluster.choice import scan_backend
from tagger.errors import ConfigError
from tagger.library.recorder import Recorder
from tagger.library.summary import ScanSummary
from tagger.library.scan import Tagger
from tagger.index import Index

BIN = Path(sys.executable).parent
TAGGER, DASK = str(BIN / "tagger"), str(BIN / "dask")
WAIT = 90.0  # bound of every wait for a process: generous, as the machine is shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


class LocalCluster:
    """`dask scheduler` and `tagger worker` processes on 127.0.0.1, each with its own log file."""

    def __init__(self, folder: Path, worker_config: Path, scheduler_args: list[str], scheme: str = "tcp") -> None:
        self.folder = folder
        self.worker_config = worker_config
        self.scheduler_args = scheduler_args
        self.port = free_port()
        self.address = f"{scheme}://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start_scheduler(self) -> None:
        log = (self.folder / "scheduler.log").open("ab")
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard", *self.scheduler_args],
            stdout=log, stderr=log,
        )
        log.close()

        def listening() -> bool:
            assert self.scheduler is not None
            if self.scheduler.poll() is not None:
                pytest.fail(f"the scheduler exited: {(self.folder / 'scheduler.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for("the scheduler", listening)

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.kill()
        self.scheduler.wait(timeout=WAIT)

    def start_worker(self, index: int | None = None) -> None:
        if index is None:
            index = len(self.workers)
            self.workers.append(None)  # type: ignore[arg-type]
            self.logs.append(self.folder / f"worker{index}.log")
        log = self.logs[index].open("ab")
        self.workers[index] = subprocess.Popen(
            [TAGGER, "--config", str(self.worker_config), "worker", self.address, "--host", "127.0.0.1"],
            stdout=log, stderr=log,
        )
        log.close()

    def joins(self, index: int) -> int:
        return self.logs[index].read_text(errors="replace").count(f"joined {self.address}")

    def wait_joined(self, index: int, times: int) -> None:
        def joined() -> bool:
            if self.workers[index].poll() is not None:
                pytest.fail(f"worker {index} exited: {self.logs[index].read_text()[-2000:]}")
            return self.joins(index) >= times

        wait_for(f"worker {index} to join", joined)

    def stop(self) -> None:
        processes = [p for p in [*self.workers, self.scheduler] if p is not None]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def worker_config(folder: Path, weights_dir: Path, **cluster: Any) -> Path:
    path = folder / "worker.yaml"
    data: dict[str, Any] = {
        "folders": [], "index": str(folder / "unused.sqlite"), "weights_dir": str(weights_dir),
        "model": {"name": "efficientnet-lite0", "fallback": None},
    }
    if cluster:
        data["cluster"] = cluster
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, weights_dir: Path, lite0: Classifier) -> Iterator[LocalCluster]:
    """A scheduler and two workers, shared by the tests of this module (lite0: the ONNX export exists)."""
    folder = tmp_path_factory.mktemp("cluster")
    local = LocalCluster(folder, worker_config(folder, weights_dir), [])
    try:
        local.start_scheduler()
        local.start_worker()
        local.start_worker()
        local.wait_joined(0, 1)
        local.wait_joined(1, 1)
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def top1_here(sample_jpegs: list[Path], lite0: Classifier, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each sample photo's top-1 label from a local scan: what the cluster must agree with."""
    folder = tmp_path_factory.mktemp("local")
    lib = folder / "lib"
    lib.mkdir()
    for src in sample_jpegs:
        shutil.copy(src, lib / src.name)
    config = folder / "c.yaml"
    config.write_text(yaml.safe_dump({
        "folders": [str(lib)], "index": str(folder / "i.sqlite"), "weights_dir": "/nonexistent",
        "model": {"name": "efficientnet-lite0", "fallback": None},
    }))
    summary = scan(config, lite0)
    assert summary.classified == len(sample_jpegs)
    return {Path(path).stem: label for path, label in top1(folder / "i.sqlite").items()}


def make_library(folder: Path, sample_jpegs: list[Path], copies: int, salt: int = 0) -> Path:
    """Distinct contents (bytes appended: decoders ignore them), so each file is a model run."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(copies):
        for src in sample_jpegs:
            (folder / f"{src.stem}__{n}.jpg").write_bytes(src.read_bytes() + bytes([n + 1, salt]))
    return folder


def top1(index: Path) -> dict[str, str]:
    with sqlite3.connect(index) as conn:
        return dict(conn.execute("SELECT path, label FROM file_tags WHERE rank = 0").fetchall())


def scan(config: Path, classifier: Classifier, *, tagger_out: list[Tagger] | None = None, **kwargs: Any) -> ScanSummary:
    cfg = load_config(config)
    with Index.open(cfg.index) as store:
        tagger = Tagger(cfg, classifier, store, scan_backend(cfg.cluster))
        try:
            return tagger.scan(list(cfg.folders), **kwargs)
        finally:
            tagger.close()


def coordinator_config(write_config: Callable[..., Path], address: str, **cluster: Any) -> Path:
    settings = {"scheduler": address, "batch_size": 2, "in_flight": 4, "retry_seconds": 0.5, "connect_timeout": 10}
    return write_config(cluster={**settings, **cluster})


def assert_same_top1(index: Path, expected: dict[str, str], count: int) -> None:
    found = top1(index)
    assert len(found) == count
    assert {path: expected[Path(path).stem.split("__")[0]] for path in found} == found


# -- without a cluster ---------------------------------------------------------------------------


def test_without_a_cluster_dask_is_never_imported(tmp_path: Path, sample_jpegs: list[Path], weights_dir: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(sample_jpegs[0], lib / "a.jpg")
    config = worker_config(tmp_path, weights_dir)
    config.write_text(config.read_text().replace("folders: []", f"folders: [{lib}]"))
    code = (
        "import sys\nfrom tagger.cli import cli\nimport tagger.daemon.service\n"
        "try:\n    cli(['--config', sys.argv[1], 'scan'], prog_name='tagger')\nexcept SystemExit as e:\n    assert not e.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed') or m in ('tagger.cluster.coordinator', 'tagger.cluster.worker'))\n"
        "print('dask modules:', loaded, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0, result.stderr
    assert "1 classified" in result.stdout and "where:" not in result.stdout
    assert "dask modules: []" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "section, message",
    [
        ({"scheduler": "192.168.1.10:8786"}, "not a scheduler address: write tcp://HOST:PORT"),
        ({"scheduler": "tcp://host:99999"}, "not a scheduler address"),
        ({"scheduler": "tls://host:8786"}, "a tls:// scheduler needs cluster.tls_ca, cluster.tls_cert, cluster.tls_key"),
        ({"scheduler": "tcp://host:8786", "tls_ca": "ca.pem"}, "write tls://HOST:PORT to use them"),
        ({"scheduler": "tls://host:8786", "tls_ca": "no.pem", "tls_cert": "no.pem", "tls_key": "no.pem"}, "is not a file"),
        ({"in_flight": 0}, "'cluster.in_flight' must be between 1 and 1000"),
        ({"batch_size": "8"}, "'cluster.batch_size' must be int"),
        ({"schedular": "tcp://h:1"}, "did you mean 'cluster.scheduler'"),
    ],
)
def test_cluster_section_is_checked_strictly(
    write_config: Callable[..., Path], section: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match="cluster|scheduler") as raised:
        load_config(write_config(cluster=section))
    assert message in str(raised.value)


def test_shipped_config_documents_the_cluster_defaults() -> None:
    from tagger.config import DEFAULT_CONFIG

    assert load_config(DEFAULT_CONFIG, require_folders=False).cluster == ClusterConfig()
    assert "tagger worker" in DEFAULT_CONFIG.read_text()


def test_cluster_option_is_checked(write_config: Callable[..., Path]) -> None:
    config = str(write_config())
    for command in (["scan", "--cluster", "localhost"], ["run", "--cluster", "http://h:1"], ["worker", "h:8786"]):
        result = subprocess.run([TAGGER, "--config", config, *command], capture_output=True, text=True, timeout=WAIT)
        assert result.returncode == 2, result.stderr
        assert "is not a scheduler address" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_scheduler_means_classified_here_with_one_warning(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], lite0: Classifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_library(tmp_path / "library", sample_jpegs, 1)
    config = coordinator_config(write_config, f"tcp://127.0.0.1:{free_port()}", batch_size=1, in_flight=1)
    with caplog.at_level(logging.WARNING, logger="tagger"):
        summary = scan(config, lite0)
    assert summary.classified == summary.classified_here == len(sample_jpegs) and summary.by_worker == {}
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("tagger.cluster.coordinator")]
    assert len(warnings) == 1 and "cannot reach the scheduler" in warnings[0], warnings


@pytest.mark.parametrize("command", [["scan", "--cluster", "tcp://127.0.0.1:1"], ["worker", "tcp://127.0.0.1:1"]])
def test_without_dask_installed_the_cluster_is_one_line(
    write_config: Callable[..., Path], command: list[str]
) -> None:
    code = (
        "import sys\nsys.modules['distributed'] = None  # as if the cluster extra were not installed\n"
        "from tagger.cli import cli\ncli(['--config', sys.argv[1], *sys.argv[2:]], prog_name='tagger')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(write_config()), *command], capture_output=True,
                            text=True, timeout=WAIT)
    assert result.returncode in (1, 2) and "pip install 'tagger[cluster]'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# -- on a local cluster --------------------------------------------------------------------------


def test_cluster_scan_tags_each_file_once_with_the_local_top1(
    cluster: LocalCluster, tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path],
    lite0: Classifier, top1_here: dict[str, str],
) -> None:
    lib = make_library(tmp_path / "library", sample_jpegs, 2)
    config = coordinator_config(write_config, cluster.address)
    summary = scan(config, lite0)
    count = len(list(lib.glob("*.jpg")))
    assert summary.classified == count and sum(summary.by_worker.values()) == count and summary.classified_here == 0
    assert all(name.rsplit("-", 1)[1].isdigit() for name in summary.by_worker)  # host-pid
    assert_same_top1(tmp_path / "index.sqlite", top1_here, count)
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:  # the workers send each image's embedding back
        assert conn.execute("SELECT COUNT(*) FROM embeddings WHERE dims = 1280").fetchone()[0] == count
    again = scan(config, lite0)
    assert (again.classified, again.unchanged) == (0, count)


def test_a_clip_is_classified_here_beside_the_cluster(
    cluster: LocalCluster, tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path],
    lite0: Classifier,
) -> None:
    """A clip is decoded by seeking in its file, which a worker may not reach: the photos go to the
    cluster, the clip is classified here, and the scan records all of them."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from sample_video import photo, write_clip

    lib = make_library(tmp_path / "library", sample_jpegs[:2], 1)
    write_clip(lib / "clip.mp4", [photo("coffee")], 3)
    summary = scan(coordinator_config(write_config, cluster.address), lite0)
    assert summary.classified == 3 and sum(summary.by_worker.values()) == 2, summary
    assert top1(tmp_path / "index.sqlite")[str(lib / "clip.mp4")] == "espresso"


def test_a_worker_killed_mid_run_loses_nothing_and_tags_nothing_twice(
    cluster: LocalCluster, tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path],
    lite0: Classifier, top1_here: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    lib = make_library(tmp_path / "library", sample_jpegs, 4)
    count = len(list(lib.glob("*.jpg")))
    recorded: dict[str, int] = {}
    original = Recorder.record

    def counting_record(self: Recorder, path: Path, *args: Any, **kwargs: Any) -> bool:
        recorded[str(path)] = recorded.get(str(path), 0) + 1
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Recorder, "record", counting_record)
    victim = cluster.workers[0]
    killed: list[int] = []

    def kill_a_worker(done: int) -> None:
        if not killed:  # the first batch is back: the others are out, some on the victim
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.wait(timeout=WAIT))

    summary = scan(coordinator_config(write_config, cluster.address), lite0, on_progress=kill_a_worker)
    assert killed == [-signal.SIGKILL]
    assert summary.classified == count and summary.failed == 0
    assert sorted(recorded) == sorted(str(p) for p in lib.glob("*.jpg")) and set(recorded.values()) == {1}
    assert_same_top1(tmp_path / "index.sqlite", top1_here, count)
    cluster.start_worker(0)  # for the tests that follow
    cluster.wait_joined(0, 2)


def test_a_coordinator_killed_mid_run_is_finished_by_the_next_start(
    cluster: LocalCluster, tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path],
    top1_here: dict[str, str],
) -> None:
    lib = make_library(tmp_path / "library", sample_jpegs, 6)
    count = len(list(lib.glob("*.jpg")))
    config = str(coordinator_config(write_config, cluster.address, batch_size=1, in_flight=2))
    first = subprocess.Popen([TAGGER, "--config", config, "scan"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for("a few sidecars", lambda: len(list(lib.glob("*.tags.json"))) >= 3 or first.poll() is not None)
        first.kill()
    finally:
        first.communicate(timeout=WAIT)
    assert first.returncode == -signal.SIGKILL, "the first scan ended before it could be killed"
    second = subprocess.run([TAGGER, "--config", config, "scan"], capture_output=True, text=True, timeout=WAIT)
    assert second.returncode == 0, second.stderr
    first_line, where = second.stdout.splitlines()[:2]
    classified = int(first_line.split(": ")[1].split(" classified")[0])
    unchanged = int(first_line.split(", ")[2].split(" unchanged")[0])
    assert classified + unchanged == count and unchanged >= 2 and classified >= 1, second.stdout
    assert where.startswith(f"where: {classified} classified on the cluster {cluster.address} (") and where.endswith(" 0 here")
    assert_same_top1(tmp_path / "index.sqlite", top1_here, count)


def test_scheduler_gone_carries_on_here_then_uses_the_cluster_once_it_is_back(
    cluster: LocalCluster, tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path],
    lite0: Classifier, top1_here: dict[str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    lib = make_library(tmp_path / "library", sample_jpegs, 3)
    count = len(list(lib.glob("*.jpg")))
    config = load_config(coordinator_config(write_config, cluster.address))
    joined_before = [cluster.joins(0), cluster.joins(1)]

    def kill_the_scheduler(done: int) -> None:
        if cluster.scheduler is not None and cluster.scheduler.poll() is None:
            cluster.kill_scheduler()

    with caplog.at_level(logging.INFO, logger="tagger"), Index.open(config.index) as store:
        tagger = Tagger(config, lite0, store, scan_backend(config.cluster))
        try:
            first = tagger.scan([lib], on_progress=kill_the_scheduler)
            assert first.classified == count and first.classified_here > 0
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and "classifying here" in warnings[0], warnings
            cluster.start_scheduler()
            cluster.wait_joined(0, joined_before[0] + 1)
            cluster.wait_joined(1, joined_before[1] + 1)
            more = make_library(tmp_path / "library" / "later", sample_jpegs[:2], 2, salt=1)
            second = tagger.scan([more])
        finally:
            tagger.close()
    assert second.classified == 4 and sum(second.by_worker.values()) == 4
    assert any("is back: classifying on the cluster again" in r.getMessage() for r in caplog.records)
    assert_same_top1(config.index, top1_here, count + 4)


def test_the_daemon_tags_on_the_cluster_at_start_and_live(
    cluster: LocalCluster, tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path],
    lite0: Classifier, top1_here: dict[str, str],
) -> None:
    import json
    import threading

    from tagger.daemon.service import Daemon, status_path

    lib = make_library(tmp_path / "library", sample_jpegs, 1, salt=2)
    watch = {"stable_seconds": 0.3, "delete_grace_seconds": 0.5, "poll_interval": 0.5, "open_timeout": 10}
    path = write_config(watch=watch, cluster={"scheduler": cluster.address, "batch_size": 2})
    config = load_config(path)
    daemon = Daemon(config, path, classifier=lite0)
    thread = threading.Thread(target=daemon.run, name="tagger-daemon")
    thread.start()
    try:
        assert daemon.ready.wait(WAIT)
        (lib / "live.jpg").write_bytes(sample_jpegs[0].read_bytes() + b"live")
        wait_for("the daemon to tag everything", lambda: len(top1(config.index)) == len(sample_jpegs) + 1)
    finally:
        daemon.request_stop()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert sum(daemon.summary.by_worker.values()) == daemon.summary.classified == len(sample_jpegs) + 1
    status = json.loads(status_path(config.index).read_text())
    assert status["cluster"]["classified_here"] == 0 and sum(status["cluster"]["by_worker"].values()) == 7
    expected = {**top1_here, "live": top1_here[sample_jpegs[0].stem]}
    assert_same_top1(config.index, expected, len(sample_jpegs) + 1)


def test_a_worker_with_other_weights_refuses_with_a_clear_message(
    cluster: LocalCluster, tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path],
    lite0: Classifier, caplog: pytest.LogCaptureFixture,
) -> None:
    """Last on this cluster: both of its workers leave. A coordinator with other weights meets them."""
    from tagger.cluster.coordinator import Cluster
    from tagger.cluster.protocol import JobSettings, ModelIdentity
    from tagger.cluster.worker import EXIT_REFUSED

    other = ModelIdentity("efficientnet-lite0", "0" * 64, "fp32")
    link: Cluster[int] = Cluster(ClusterConfig(scheduler=cluster.address), JobSettings(other, 5, 10**8, True, 0.01))
    try:
        with caplog.at_level(logging.ERROR, logger="tagger"):
            assert link.submit(1, [sample_jpegs[0].read_bytes()], 1) is False  # no worker takes it: classified here
    finally:
        link.close()
    for worker, log in zip(cluster.workers, cluster.logs):
        assert worker.wait(timeout=WAIT) == EXIT_REFUSED
        assert "the coordinator efficientnet-lite0 fp32 (weights sha256 0000000000000000...): refused" in log.read_text()
    assert sum("refused: it runs efficientnet-lite0" in r.getMessage() for r in caplog.records) == 2


# -- TLS -----------------------------------------------------------------------------------------


def make_certificates(folder: Path) -> None:
    """A throwaway CA signing the scheduler's, a worker's and a coordinator's certificates, and a
    stranger's CA and certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=WAIT)

    for ca in ("ca", "stranger-ca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("scheduler", "ca"), ("worker", "ca"), ("coordinator", "ca"), ("stranger", "stranger-ca")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", f"{name}.pem")


def test_tls_cluster_tags_and_refuses_strangers(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], weights_dir: Path,
    lite0: Classifier, top1_here: dict[str, str],
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    tls = {"tls_ca": str(certs / "ca.pem"), "tls_cert": str(certs / "worker.pem"), "tls_key": str(certs / "worker.key")}
    local = LocalCluster(
        tmp_path, worker_config(tmp_path, weights_dir, **tls),
        ["--protocol", "tls", "--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / "scheduler.pem"),
         "--tls-key", str(certs / "scheduler.key")],
        scheme="tls",
    )
    lib = make_library(tmp_path / "library", sample_jpegs, 1)
    try:
        local.start_scheduler()
        local.start_worker()
        local.wait_joined(0, 1)
        mine = {**tls, "tls_cert": str(certs / "coordinator.pem"), "tls_key": str(certs / "coordinator.key")}
        summary = scan(coordinator_config(write_config, local.address, **mine), lite0)
        assert sum(summary.by_worker.values()) == len(sample_jpegs) == summary.classified
        assert_same_top1(tmp_path / "index.sqlite", top1_here, len(sample_jpegs))
        for path in lib.glob("*.tags.json"):
            path.unlink()
        (tmp_path / "index.sqlite").unlink()
        strangers = [
            ("tls", {"tls_ca": str(certs / "ca.pem"), "tls_cert": str(certs / "stranger.pem"),
                     "tls_key": str(certs / "stranger.key")}),
            ("tcp", {}),
        ]
        for scheme, settings in strangers:
            address = local.address.replace("tls://", f"{scheme}://")
            config = coordinator_config(write_config, address, connect_timeout=2, **settings)
            result = subprocess.run([TAGGER, "--config", str(config), "scan"], capture_output=True, text=True,
                                    timeout=WAIT)
            assert result.returncode == 0, result.stderr
            assert f"where: 0 classified on the cluster {address}, {len(sample_jpegs)} here" in result.stdout
            assert "classifying here" in result.stderr
            (tmp_path / "index.sqlite").unlink()
    finally:
        local.stop()
