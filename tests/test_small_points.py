"""The smaller points of issue 29, each as it was met: a busy index during the daemon's work and a
viewer's correction, one empty-folder warning per folder move, and a killed Dask scheduler."""
from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tagger.config import load_config
from tagger.library.jsonsidecar import sidecar_path

from test_cluster import TAGGER, LocalCluster, coordinator_config, make_library, worker_config
from test_daemon import Running, indexed, start_daemon, wait_until  # noqa: F401 (start_daemon: a fixture)
from test_web import make_app, scanned_config

TOKEN = "a-long-enough-secret-token"


def test_the_daemon_counts_a_file_done_only_once_its_row_is_committed(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """An external sqlite3 holding the write lock: the daemon's sidecar comes first (as the daemon
    guide says), but the file is neither counted nor reported before its row is committed."""
    r = start_daemon()
    photo = r.library / "while-busy.jpg"
    before = r.daemon.summary.tagged
    other = sqlite3.connect(r.index, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with caplog.at_level(logging.WARNING, logger="tagger.daemon.service"):
            shutil.copy(next(p for p in sample_jpegs if p.name == "coffee.jpg"), photo)
            wait_until(lambda: "the index is busy" in caplog.text, timeout=30)
        wait_until(sidecar_path(photo).exists, timeout=30)  # sidecars first, then the row
        time.sleep(1)  # more tries meanwhile, each stopped by the lock
        assert str(photo) not in indexed(r.index)
        assert r.daemon.summary.tagged == before  # not counted (nor in `tagger status`) without its row
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_until(lambda: r.daemon.summary.tagged == before + 1, timeout=30)
    assert indexed(r.index).get(str(photo)) == "tagged"  # counted: its row was there already
    time.sleep(0.5)
    assert r.daemon.summary.tagged == before + 1  # counted once, however many tries it took


@pytest.fixture
def viewer_app(tmp_path: Path, sample_jpegs: list[Path], lite0: Any, weights_dir: Path) -> Iterator[Flask]:
    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(sample_jpegs[0], library / sample_jpegs[0].name)
    config = load_config(scanned_config(library, lite0, weights_dir))
    app = make_app(config, lite0, token=TOKEN)
    yield app
    app.extensions["tagger"].close()


def test_a_correction_while_the_index_is_busy_says_busy_not_read_only(
    viewer_app: Flask, tmp_path: Path, sample_jpegs: list[Path]
) -> None:
    """A correction answered 503 "this viewer reads the index only" when another program held the
    write lock; it says the real reason, with Retry-After. Then it goes through."""
    index = viewer_app.extensions["tagger"].config.index
    raw = str(tmp_path / "library" / sample_jpegs[0].name).lstrip("/")
    client = viewer_app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    other = sqlite3.connect(index, isolation_level=None)
    try:
        for _ in range(2):  # the viewer's writer opening, then an open writer's transaction
            other.execute("BEGIN IMMEDIATE")
            try:
                answer = client.post(f"/api/images/{raw}/keywords", json={"add": ["busy"]}, headers=headers)
            finally:
                other.execute("ROLLBACK")
            assert answer.status_code == 503
            assert "the index is busy (another program holds its write lock)" in answer.json["error"]
            assert "reads the index only" not in answer.json["error"]
            assert answer.headers["Retry-After"] == "5"
            assert client.post(f"/api/images/{raw}/keywords", json={"add": ["free"]}, headers=headers).status_code == 200
    finally:
        other.close()


def test_a_folder_move_on_a_polled_share_warns_once(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One move of a polled library (an unmounted share) logged 26 identical "folder is empty" lines:
    one per burst of deletions."""
    r = start_daemon(watch={"mode": "polling"})
    for i, src in enumerate(sample_jpegs[:4]):
        folder = r.library / f"album{i}"
        folder.mkdir()
        shutil.copy(src, folder / src.name)
        shutil.copy(src, r.library / f"top{i}.jpg")
    wait_until(lambda: sum(1 for s in indexed(r.index).values() if s == "tagged") == 8, timeout=60)
    r.idle()
    with caplog.at_level(logging.WARNING):
        r.library.rename(tmp_path / "share-contents")
        r.library.mkdir()  # the empty mount point
        wait_until(lambda: "deletions under it are not applied" in caplog.text, timeout=30)
        time.sleep(4 * 0.5)  # several polls: every deletion of the move has been seen
        r.idle()
    lines = [rec.getMessage() for rec in caplog.records if "the folder is empty" in rec.getMessage()]
    assert len([line for line in lines if "deletions under it are not applied" in line]) == 1, lines
    assert len(set(lines)) == len(lines), lines  # the reconcile's own line (rows kept) is said once too
    assert len(indexed(r.index)) == 8


def test_a_killed_scheduler_gives_one_clear_warning_and_no_empty_error(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], weights_dir: Path, lite0: Any
) -> None:
    """`tagger scan --cluster` whose scheduler is killed printed "tagger: ERROR: " (Dask's
    CancelledError has no message) and Dask's tracebacks before tagger's own warning. Dask's lines
    go to the debug log (-v); the warning is the first thing said."""
    folder = tmp_path / "cluster"
    folder.mkdir()
    cluster = LocalCluster(folder, worker_config(folder, weights_dir), [])
    try:
        cluster.start_scheduler()
        cluster.start_worker()
        cluster.wait_joined(0, 1)
        make_library(tmp_path / "library", sample_jpegs, 80)  # long enough to outlast Dask's 10 s reconnect
        config = coordinator_config(write_config, cluster.address)
        scan = subprocess.Popen([TAGGER, "--config", str(config), "scan"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(scan.stderr or []), daemon=True)
        reader.start()
        wait_until(lambda: any("connected to the scheduler" in line for line in lines), timeout=120)
        time.sleep(0.5)
        cluster.kill_scheduler()
        out = scan.stdout.read() if scan.stdout else ""  # stderr is the reader thread's alone
        scan.wait(600)
        reader.join(10)
        for pipe in (scan.stdout, scan.stderr):
            if pipe is not None:
                pipe.close()
    finally:
        cluster.stop()
    assert scan.returncode == 0, lines
    said = [line.rstrip("\n") for line in lines if not line.startswith("tagger: INFO")]
    # the first thing said is tagger's own warning: the lost connection, or a batch it takes back
    clear = ("the connection to the scheduler was lost", "stopped answering", "came back from the cluster without tags")
    assert said and said[0].startswith("tagger: WARNING: ") and any(c in said[0] for c in clear), said
    assert any("the connection to the scheduler was lost" in line or "stopped answering" in line for line in said), said
    assert not any(line.rstrip().endswith("ERROR:") for line in lines), lines
    assert not any("Traceback" in line for line in lines), lines
    assert f"{80 * len(sample_jpegs)} images" in out


def test_an_error_without_a_message_never_prints_an_empty_line() -> None:
    """The CLI's one handler names the exception when a record would say nothing."""
    code = (
        "import asyncio, logging, sys\n"
        "import tagger.cli as c\n"
        "@c.cli.command('boom')\n"
        "def boom():\n"
        "    try:\n"
        "        raise asyncio.CancelledError()\n"
        "    except BaseException as exc:\n"
        "        logging.getLogger('client').exception(exc)\n"
        "sys.argv = ['tagger', '--config', '/nonexistent.yaml', 'boom']\n"
        "c.main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert "tagger: ERROR: CancelledError" in result.stderr, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.rstrip().endswith("ERROR:")]
