"""`tagger run` against a real watchdog observer on temp folders, with the real model.

In-process daemons (fast, one loaded model) for the file-system cases; real `tagger run`
processes for signals, kill -9 and reload.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from tagger.config import load_config
from tagger.daemon.service import Daemon
from tagger.library.jsonsidecar import sidecar_path

from conftest import CountingClassifier

FAST_WATCH = {"stable_seconds": 0.3, "delete_grace_seconds": 0.5, "poll_interval": 0.5, "open_timeout": 10}


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.05) -> float:
    """Seconds it took for `predicate` to hold; fails the test after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def indexed(index: Path) -> dict[str, str]:
    """path -> status, read as a user would, read-only."""
    if not index.exists():
        return {}
    conn = sqlite3.connect(f"{index.as_uri()}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT path, status FROM files").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def top_label(image: Path) -> str | None:
    try:
        tags = json.loads(sidecar_path(image).read_text())["tags"]
    except (OSError, ValueError):
        return None
    return tags[0]["label"] if tags else None


def small_image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


class Running:
    def __init__(self, daemon: Daemon, thread: threading.Thread, library: Path, index: Path, config: Path) -> None:
        self.daemon, self.thread, self.library, self.index, self.config = daemon, thread, library, index, config

    def idle(self, timeout: float = 30) -> None:
        wait_until(lambda: len(self.daemon.queue) == 0, timeout)
        time.sleep(0.2)


@pytest.fixture
def start_daemon(
    tmp_path: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(**overrides: Any) -> Running:
        watch = {**FAST_WATCH, **overrides.pop("watch", {})}
        config_path = write_config(watch=watch, **overrides)
        config = load_config(config_path)
        daemon = Daemon(config, config_path, classifier=counting)  # type: ignore[arg-type]
        thread = threading.Thread(target=daemon.run, name="tagger-daemon")
        thread.start()
        assert daemon.ready.wait(30)
        r = Running(daemon, thread, config.folders[0], config.index, config_path)
        running.append(r)
        r.idle()
        return r

    yield start
    for r in running:
        r.daemon.request_stop()
        r.thread.join(30)
        assert not r.thread.is_alive()


def test_startup_reconcile_tags_what_arrived_while_down(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], tmp_path: Path
) -> None:
    lib = tmp_path / "library"
    lib.mkdir()
    for src in sample_jpegs:
        shutil.copy(src, lib / src.name)
    r = start_daemon()
    wait_until(lambda: all(sidecar_path(lib / s.name).exists() for s in sample_jpegs))
    assert top_label(lib / "coffee.jpg") == "espresso"
    assert set(indexed(r.index).values()) == {"tagged"}


def test_drop_copy_and_rename_into_place(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], counting: CountingClassifier
) -> None:
    r = start_daemon()
    coffee = next(p for p in sample_jpegs if p.name == "coffee.jpg")
    drop = r.library / "drop.jpg"
    shutil.copy(coffee, drop)
    latency = wait_until(lambda: top_label(drop) == "espresso", timeout=10)
    assert latency < 3
    assert counting.images == 1
    copy = r.library / "copy.jpg"
    shutil.copy(drop, copy)
    wait_until(lambda: top_label(copy) == "espresso")
    assert counting.images == 1  # same content: no model run
    # rsync and editors: write a hidden temporary, then rename it into place
    temp = r.library / ".final.jpg.Xa81qZ"
    shutil.copy(next(p for p in sample_jpegs if p.name == "chelsea.jpg"), temp)
    temp.rename(r.library / "final.jpg")
    wait_until(lambda: top_label(r.library / "final.jpg") is not None)
    r.idle()
    assert counting.images == 2
    assert str(temp) not in indexed(r.index)
    assert not sidecar_path(temp).exists()


def test_slow_write_in_chunks_is_tagged_once_complete(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], counting: CountingClassifier
) -> None:
    r = start_daemon()
    data = next(p for p in sample_jpegs if p.name == "coffee.jpg").read_bytes()
    target = r.library / "slow.jpg"
    with target.open("wb") as fh:
        for i in range(4):
            fh.write(data[i * len(data) // 4 : (i + 1) * len(data) // 4])
            fh.flush()
            time.sleep(0.8)  # longer than stable_seconds: only the close event says it is done
    wait_until(lambda: top_label(target) == "espresso")
    r.idle()
    assert counting.images == 1
    assert indexed(r.index)[str(target)] == "tagged"


def test_moves_keep_tags_without_a_model_run(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], counting: CountingClassifier, tmp_path: Path
) -> None:
    r = start_daemon()
    a = r.library / "a.jpg"
    shutil.copy(next(p for p in sample_jpegs if p.name == "coffee.jpg"), a)
    wait_until(lambda: top_label(a) == "espresso")
    runs = counting.images
    b = r.library / "b.jpg"
    a.rename(b)
    wait_until(lambda: str(b) in indexed(r.index) and str(a) not in indexed(r.index))
    assert top_label(b) == "espresso" and not sidecar_path(a).exists()  # the sidecar moves first
    assert json.loads(sidecar_path(b).read_text())["image"]["file"] == "b.jpg"
    album = r.library / "album"
    album.mkdir()
    b.rename(album / "b.jpg")
    wait_until(lambda: str(album / "b.jpg") in indexed(r.index))
    renamed = r.library / "album 2024"
    album.rename(renamed)
    wait_until(lambda: str(renamed / "b.jpg") in indexed(r.index) and str(album / "b.jpg") not in indexed(r.index))
    assert top_label(renamed / "b.jpg") == "espresso"
    r.idle()
    assert counting.images == runs


def test_move_out_is_a_delete_and_back_costs_nothing(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], counting: CountingClassifier, tmp_path: Path
) -> None:
    r = start_daemon()
    photo = r.library / "cat.jpg"
    shutil.copy(next(p for p in sample_jpegs if p.name == "chelsea.jpg"), photo)
    wait_until(lambda: top_label(photo) is not None)
    runs = counting.images
    outside = tmp_path / "outside"
    outside.mkdir()
    photo.rename(outside / "cat.jpg")
    wait_until(lambda: str(photo) not in indexed(r.index))
    wait_until(lambda: not sidecar_path(photo).exists())  # our orphan sidecar goes too
    (outside / "cat.jpg").rename(photo)
    wait_until(lambda: top_label(photo) is not None and str(photo) in indexed(r.index))
    r.idle()
    assert counting.images == runs


def test_delete_drops_row_and_sidecar(start_daemon: Callable[..., Running], sample_jpegs: list[Path]) -> None:
    r = start_daemon()
    photo = r.library / "x.jpg"
    shutil.copy(sample_jpegs[0], photo)
    wait_until(lambda: sidecar_path(photo).exists())
    photo.unlink()
    wait_until(lambda: str(photo) not in indexed(r.index) and not sidecar_path(photo).exists())


def test_a_burst_of_two_thousand_images_is_tagged_exactly_once(
    start_daemon: Callable[..., Running], counting: CountingClassifier, tmp_path: Path
) -> None:
    """2,000 files land at once (100 distinct pictures, each 20 times): every one is tagged, once."""
    r = start_daemon(model={"batch_size": 32})
    staging = tmp_path / "staging"
    staging.mkdir()
    pictures = [small_image(staging / f"picture_{i:03d}.png", i).read_bytes() for i in range(100)]
    files = []
    for i in range(2000):
        f = staging / f"burst_{i:04d}.png"
        f.write_bytes(pictures[i % 100])
        files.append(f)
    for f in files:
        f.rename(r.library / f.name)
    wait_until(lambda: sum(1 for s in indexed(r.index).values() if s == "tagged") == 2000, timeout=240, step=0.5)
    r.idle()
    assert counting.images == 100  # one model run per distinct picture
    assert len(indexed(r.index)) == 2000
    assert all(sidecar_path(r.library / f.name).exists() for f in files)


def test_polling_mode_sees_new_files(start_daemon: Callable[..., Running], sample_jpegs: list[Path]) -> None:
    r = start_daemon(watch={"mode": "polling"})
    assert set(r.daemon.config.folders) and r.daemon.config.watch.mode == "polling"
    photo = r.library / "polled.jpg"
    shutil.copy(next(p for p in sample_jpegs if p.name == "coffee.jpg"), photo)
    wait_until(lambda: top_label(photo) == "espresso", timeout=10)


def test_an_unmounted_polled_share_keeps_its_rows(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Polling sees every file of an unmounted share deleted at once; its rows wait for its return."""
    r = start_daemon(watch={"mode": "polling"})
    for src in sample_jpegs[:3]:
        shutil.copy(src, r.library / src.name)
    wait_until(lambda: sum(1 for s in indexed(r.index).values() if s == "tagged") == 3, timeout=30)
    r.idle()
    mounted = tmp_path / "share-contents"
    with caplog.at_level(logging.WARNING):
        r.library.rename(mounted)
        r.library.mkdir()  # the empty mount point
        wait_until(lambda: "deletions under it are not applied" in caplog.text, timeout=30)
    r.idle()
    assert len(indexed(r.index)) == 3
    r.library.rmdir()
    mounted.rename(r.library)  # back: nothing to do
    time.sleep(2 * FAST_WATCH["poll_interval"])
    r.idle()
    assert len(indexed(r.index)) == 3 and all(sidecar_path(r.library / s.name).exists() for s in sample_jpegs[:3])


def test_watch_limit_falls_back_to_polling(
    start_daemon: Callable[..., Running],
    sample_jpegs: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import errno

    from watchdog.observers.inotify import InotifyObserver

    def no_watches(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyObserver, "schedule", no_watches)
    with caplog.at_level(logging.ERROR):
        r = start_daemon()
    assert "fs.inotify.max_user_watches" in caplog.text
    photo = r.library / "p.jpg"
    shutil.copy(sample_jpegs[0], photo)
    wait_until(lambda: sidecar_path(photo).exists(), timeout=10)


def test_inotify_overflow_turns_into_a_reconcile(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The kernel dropped events: watchdog says so only in its log; we reconcile and say how to fix it."""
    from tagger.config import WatchConfig
    from tagger.daemon.watch import Watcher
    from tagger.daemon.workqueue import Reconcile, WorkQueue

    queue = WorkQueue(0.3, 10, 0.5, 1000)
    watcher = Watcher(queue, WatchConfig(mode="inotify"))
    try:
        watcher.watch([tmp_path])
        with caplog.at_level(logging.WARNING):
            logging.getLogger("watchdog.observers.inotify_c").warning(
                "Inotify queue overflowed; filesystem events were lost"
            )
        assert "fs.inotify.max_queued_events" in caplog.text
        work = queue.next_work(16, timeout=1)
        assert work is not None and work == Reconcile(tmp_path)
    finally:
        watcher.stop()


def test_a_dead_polling_thread_is_restarted(tmp_path: Path, sample_jpegs: list[Path]) -> None:
    from tagger.config import WatchConfig
    from tagger.daemon.watch import Watcher
    from tagger.daemon.workqueue import Reconcile, TagFiles, WorkQueue

    queue = WorkQueue(0.3, 10, 0.5, 1000)
    watcher = Watcher(queue, WatchConfig(mode="polling", poll_interval=0.2))
    try:
        watcher.watch([tmp_path])
        watcher._poller.stop()  # as if its thread had died
        watcher.supervise()
        reconcile = queue.next_work(16, timeout=1)
        assert reconcile is not None and isinstance(reconcile, Reconcile)
        assert watcher._poller.is_alive()
        shutil.copy(sample_jpegs[0], tmp_path / "after.jpg")
        work = queue.next_work(16, timeout=5)
        assert work is not None and isinstance(work, TagFiles) and work.paths == (tmp_path / "after.jpg",)
    finally:
        watcher.stop()


# -- real processes: signals, kill -9, reload ------------------------------------------------

TAGGER = str(Path(sys.executable).parent / "tagger")


def process_config(tmp_path: Path, folders: list[Path], weights_dir: Path) -> Path:
    config = tmp_path / "daemon.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "folders": [str(f) for f in folders],
                "index": str(tmp_path / "index.sqlite"),
                "weights_dir": str(weights_dir),
                "model": {"name": "efficientnet-lite0", "fallback": None, "batch_size": 8},
                "watch": FAST_WATCH,
            }
        )
    )
    return config


def start_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([TAGGER, "--config", str(config), "run"], stdout=out, stderr=subprocess.STDOUT)


def fill(folder: Path, sample_jpegs: list[Path], copies: int) -> list[Path]:
    """Distinct real photos: each copy gets one changed byte at its end (a new hash, same picture)."""
    out = []
    for i in range(copies):
        for src in sample_jpegs:
            dst = folder / f"{src.stem}_{i:03d}.jpg"
            dst.write_bytes(src.read_bytes() + bytes([i % 256, i // 256]))
            out.append(dst)
    return out


def assert_all_tagged_once(index: Path, files: list[Path]) -> None:
    rows = indexed(index)
    assert sorted(rows) == sorted(str(f) for f in files)
    assert set(rows.values()) == {"tagged"}
    for f in files:
        json.loads(sidecar_path(f).read_text())  # every sidecar is whole, valid JSON
    leftovers = [p.name for p in files[0].parent.iterdir() if p.name.endswith(".tmp")]
    assert all(name.startswith(".") for name in leftovers)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stop_mid_batch_then_restart_loses_nothing(
    tmp_path: Path, sample_jpegs: list[Path], weights_dir: Path, how: str
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    files = fill(lib, sample_jpegs, 20)  # 120 photos
    config = process_config(tmp_path, [lib], weights_dir)
    log = tmp_path / "daemon.log"
    proc = start_process(config, log)
    try:
        wait_until(lambda: len(indexed(tmp_path / "index.sqlite")) >= 10, timeout=60)
        proc.send_signal(getattr(signal, how))
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if how == "SIGTERM":
        assert code == 0, log.read_text()
        assert len(indexed(tmp_path / "index.sqlite")) < len(files)  # it stopped early, cleanly
    for f in files:
        if sidecar_path(f).exists():
            json.loads(sidecar_path(f).read_text())
    proc = start_process(config, log)
    try:
        wait_until(lambda: len(indexed(tmp_path / "index.sqlite")) == len(files), timeout=120)
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert_all_tagged_once(tmp_path / "index.sqlite", files)


def test_sighup_reloads_and_adds_a_folder(tmp_path: Path, sample_jpegs: list[Path], weights_dir: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    shutil.copy(sample_jpegs[0], second / "already-there.jpg")
    config = process_config(tmp_path, [first], weights_dir)
    log = tmp_path / "daemon.log"
    proc = start_process(config, log)
    try:
        wait_until(lambda: "ready" in log.read_text(), timeout=60)
        data = yaml.safe_load(config.read_text())
        data["folders"].append(str(second))
        config.write_text(yaml.safe_dump(data))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: sidecar_path(second / "already-there.jpg").exists(), timeout=30)
        shutil.copy(sample_jpegs[1], second / "new.jpg")
        wait_until(lambda: sidecar_path(second / "new.jpg").exists(), timeout=30)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert "reloaded" in log.read_text()


def keywords_of(index: Path, image: Path) -> set[str]:
    conn = sqlite3.connect(f"{index.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT k.keyword FROM keywords k JOIN files f ON f.sha256 = k.sha256 WHERE f.path = ?", (str(image),)
        )
        return {r[0] for r in rows}
    finally:
        conn.close()


def test_a_busy_index_makes_the_daemon_wait_not_fail(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holding the write lock longer than SQLite waits (a long `tagger retag`)."""
    r = start_daemon()
    other = sqlite3.connect(r.index, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with caplog.at_level(logging.WARNING, logger="tagger.daemon.service"):
            shutil.copy(sample_jpegs[0], r.library / "while-busy.jpg")
            wait_until(lambda: "the index is busy" in caplog.text, timeout=30)
        assert r.thread.is_alive() and str(r.library / "while-busy.jpg") not in indexed(r.index)
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_until(lambda: indexed(r.index).get(str(r.library / "while-busy.jpg")) == "tagged", timeout=30)
    assert r.thread.is_alive()


def test_sighup_applies_new_rules_to_new_files(
    start_daemon: Callable[..., Running], sample_jpegs: list[Path], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n", encoding="utf-8")
    r = start_daemon(rules=str(rules))
    chelsea = next(p for p in sample_jpegs if p.stem == "chelsea")
    shutil.copy(chelsea, r.library / "before.jpg")
    wait_until(lambda: bool(keywords_of(r.index, r.library / "before.jpg")))
    assert "kitty" not in keywords_of(r.index, r.library / "before.jpg")
    rules.write_text("rules: [{subtree: domestic cat, rename: kitty, threshold: 0.01}]\n", encoding="utf-8")
    r.daemon.request_reload()
    time.sleep(1.0)
    shutil.copy(chelsea, r.library / "after.jpg")  # a new file: keywords from the rules now in force
    wait_until(lambda: "kitty" in keywords_of(r.index, r.library / "after.jpg"))


def test_the_daemon_stops_when_its_index_is_deleted_instead_of_writing_into_the_void(
    tmp_path: Path, write_config: Callable[..., Path], counting: CountingClassifier, sample_jpegs: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Deleted while it ran, the index took the daemon's rows into an unlinked file with no warning,
    and they were lost. Now it stops (exit 1: systemd starts it again, on a fresh index) before writing."""
    config_path = write_config(watch=FAST_WATCH)
    config = load_config(config_path)
    daemon = Daemon(config, config_path, classifier=counting)  # type: ignore[arg-type]
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()), name="tagger-daemon")
    thread.start()
    try:
        assert daemon.ready.wait(30)
        for leftover in config.index.parent.glob(config.index.name + "*"):
            if not leftover.name.endswith(".lock"):
                leftover.unlink()
        with caplog.at_level(logging.ERROR):
            shutil.copy(sample_jpegs[0], config.folders[0] / "new.jpg")
            thread.join(20)
        assert not thread.is_alive() and result == [1]
        assert "the index was deleted or replaced while tagger ran" in caplog.text
        assert counting.images == 0  # nothing classified into a file nobody reads
    finally:
        daemon.request_stop()
        thread.join(30)
