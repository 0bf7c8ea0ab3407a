"""A hostile library: odd names, special files, huge files and a full disk never stop the tagger.

Real files in temp folders: a FIFO, a Unix socket, a symlink to a device, a sparse file of
1.5 GB, names that are not UTF-8 and names with a newline, for scan, daemon and viewer.
A full disk is simulated (SQLite's own "database or disk is full" error, ENOSPC from fsync).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tagger.daemon import service as daemon_module
from tagger import fileio as fileio_module
from tagger.engine.classify import Classifier
from tagger.cli import cli
from tagger.config import load_config
from tagger.errors import ConfigError
from tagger.library.lock import index_lock
from tagger.library.jsonsidecar import sidecar_path
from tagger.index import Index
from tagger.web import create_app

from conftest import CountingClassifier
from test_daemon import Running, start_daemon, wait_until  # noqa: F401 - the fixture, shared

SPARSE_BYTES = 1_500_000_000
BYTES_NAME = os.fsdecode(b"\xff\xfe.jpg")  # a Latin-1 / CP-1252 name, as copied from an old share
BYTES_FOLDER = os.fsdecode(b"caf\xe9")
NEWLINE_NAME = "new\nline.jpg"


def hostile(lib: Path, photo: Path, outside: Path) -> dict[str, Path]:
    """Photos under odd names beside special files bearing image names; returns them by role."""
    lib.mkdir(parents=True, exist_ok=True)
    (lib / BYTES_FOLDER).mkdir()
    outside.mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, outside / "secret.jpg")
    files = {
        "plain": lib / "plain.jpg",
        "bytes": lib / BYTES_NAME,
        "bytes_folder": lib / BYTES_FOLDER / "inside.jpg",
        "newline": lib / NEWLINE_NAME,
    }
    for path in files.values():
        shutil.copy(photo, path)
    (lib / "link.jpg").symlink_to(lib / "plain.jpg")  # followed: it stays inside the folders
    files["link"] = lib / "link.jpg"
    (lib / "out.jpg").symlink_to(outside / "secret.jpg")
    (lib / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(lib / "pipe.jpg")
    with open(lib / "huge.jpg", "wb") as fh:
        fh.truncate(SPARSE_BYTES)  # sparse: 1.5 GB long, nothing on disk
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(lib / "sock.jpg"))
    return files


REFUSED = {
    "out.jpg": "leads outside the configured folders",
    "zero.jpg": "a symlink that leads outside the configured folders (to /dev/zero)",
    "pipe.jpg": "a FIFO",
    "sock.jpg": "a Unix socket",
    "huge.jpg": "too large: 1,430.5 MB is over the limit of 200 MB (decode.max_file_mb)",
}


def index_rows(index: Path) -> dict[str, tuple[str, str | None]]:
    """path -> (status, error), through the index's own read-only connection."""
    try:
        with Index.open(index, readonly=True) as store:
            return {f.path: (f.status, f.error) for f in _all_files(store)}
    except Exception:  # noqa: BLE001 - not created yet
        return {}


def _all_files(store: Index) -> list[Any]:
    found = []
    for path in store.paths_under("/"):
        record = store.file_record(path)
        assert record is not None
        found.append(record)
    return found


@pytest.fixture
def photo(sample_jpegs: list[Path]) -> Path:
    return next(p for p in sample_jpegs if p.name == "coffee.jpg")


@pytest.fixture
def use_model(monkeypatch: pytest.MonkeyPatch, counting: CountingClassifier) -> CountingClassifier:
    """`tagger` commands get the session's loaded model (and it counts model runs)."""
    monkeypatch.setattr(Classifier, "from_settings", classmethod(lambda cls, choice: counting))
    return counting


# -- scan ------------------------------------------------------------------------------------


def test_scan_tags_odd_names_and_refuses_special_files(
    tmp_path: Path, photo: Path, write_config: Callable[..., Path], use_model: CountingClassifier
) -> None:
    files = hostile(tmp_path / "library", photo, tmp_path / "outside")
    config = write_config()
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "scan"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("10 images: ") and "5 failed" in result.stdout
    runs = use_model.images  # one content, under five names (and maybe two in one batch)
    for name, reason in REFUSED.items():
        assert f"failed: {tmp_path / 'library' / name}: " in result.stderr and reason in result.stderr
    rows = index_rows(tmp_path / "index.sqlite")
    for path in files.values():
        assert rows[str(path)] == ("tagged", None)
        assert json.loads(sidecar_path(path).read_bytes())["image"]["file"] == path.name
    for name, reason in REFUSED.items():
        status, error = rows[str(tmp_path / "library" / name)]
        assert status == "failed" and error is not None and reason in error

    nul = runner.invoke(cli, ["--config", str(config), "query", "-0"]).stdout_bytes
    assert sorted(nul.split(b"\0")[:-1]) == sorted(os.fsencode(p) for p in files.values())
    assert runner.invoke(cli, ["--config", str(config), "query", "--format", "paths0"]).stdout_bytes == nul
    lines = runner.invoke(cli, ["--config", str(config), "query", "--tag", "espresso"]).stdout_bytes
    assert os.fsencode(files["bytes"]) + b"\n" in lines  # the name's own bytes
    as_json = json.loads(runner.invoke(cli, ["--config", str(config), "query", "--format", "json"]).stdout)
    assert {r["path"] for r in as_json} == {str(p) for p in files.values()}  # \udcff escapes: the same str

    listed = runner.invoke(cli, ["--config", str(config), "failures"])
    assert listed.exit_code == 0 and f"{tmp_path / 'library' / 'pipe.jpg'}: not a regular file: a FIFO" in listed.stdout
    again = runner.invoke(cli, ["--config", str(config), "scan"])
    assert again.exit_code == 0 and "10 unchanged" in again.stdout and use_model.images == runs


def test_scan_memory_stays_low_beside_dev_zero_and_a_sparse_file(
    tmp_path: Path, photo: Path, write_config: Callable[..., Path], lite0: Classifier
) -> None:
    """A real `tagger scan` process (the ONNX export already cached by `lite0`): its peak memory."""
    hostile(tmp_path / "library", photo, tmp_path / "outside")
    config = write_config()
    # Started from a small Python, not from this (large) test process: a child's peak memory
    # counts what it had when it was forked.
    measure = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:]).returncode; "
        "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(code)"
    )
    command = [sys.executable, "-m", "tagger", "--config", str(config), "scan"]
    done = subprocess.run([sys.executable, "-c", measure, *command], capture_output=True, text=True, errors="replace")
    assert done.returncode == 0, done.stderr
    assert "5 failed" in done.stdout
    peak_kb = int(done.stderr.rsplit("peak_kb ", 1)[1].split()[0])
    assert peak_kb < 300 * 1024, f"peak {peak_kb / 1024:.0f} MB"


def test_a_file_growing_past_the_limit_while_read_is_cut_off(tmp_path: Path) -> None:
    from tagger.errors import DecodeError
    from tagger.fileio import read_limited

    small = tmp_path / "small.jpg"
    small.write_bytes(b"x" * 100)
    assert read_limited(small, 100) == b"x" * 100
    with pytest.raises(DecodeError, match="too large"):
        read_limited(small, 99)
    with pytest.raises(DecodeError, match="a character device"):
        read_limited("/dev/zero", 10)  # not opened at all: refused from its stat


def test_rescan_removes_sidecars_of_deleted_files_and_stats_say_what_is_kept(
    tmp_path: Path, photo: Path, write_config: Callable[..., Path], use_model: CountingClassifier
) -> None:
    lib = tmp_path / "library"
    lib.mkdir()
    shutil.copy(photo, lib / "a.jpg")
    config = write_config()
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", str(config), "scan"]).exit_code == 0
    assert sidecar_path(lib / "a.jpg").exists()
    (lib / "a.jpg").unlink()
    result = runner.invoke(cli, ["--config", str(config), "scan"])
    assert "1 removed from the index" in result.stdout
    assert not sidecar_path(lib / "a.jpg").exists()
    stats = runner.invoke(cli, ["--config", str(config), "stats"]).stdout
    assert "files tagged: 0" in stats and "distinct images classified: 1" in stats
    assert "no longer in any file: 1" in stats


def test_an_unmounted_share_or_an_unreadable_folder_keeps_its_rows(
    tmp_path: Path, photo: Path, write_config: Callable[..., Path], use_model: CountingClassifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A network share that is not mounted leaves an empty mount point; a folder may fail to list
    (permission, I/O error, stale handle). Neither means its files were deleted."""
    lib = tmp_path / "library"
    (lib / "sub").mkdir(parents=True)
    for path in (lib / "a.jpg", lib / "sub" / "b.jpg", lib / "sub" / "c.jpg"):
        shutil.copy(photo, path)
    config = str(write_config())
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", config, "scan"]).exit_code == 0
    indexed = set(index_rows(tmp_path / "index.sqlite"))
    assert len(indexed) == 3

    real_scandir = os.scandir

    def unlistable(path: Any = ".") -> Any:
        if os.fspath(path) == str(lib / "sub"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "scandir", unlistable)
        result = runner.invoke(cli, ["--config", config, "scan"])
    assert result.exit_code == 0 and "0 removed from the index" in result.output
    assert f"{lib / 'sub'}: cannot list this folder (Permission denied); its files stay in the index" in result.output
    assert set(index_rows(tmp_path / "index.sqlite")) == indexed

    away = tmp_path / "away"
    shutil.move(lib, away)
    lib.mkdir()  # the empty mount point of a share that is not mounted
    result = runner.invoke(cli, ["--config", config, "scan"])
    assert result.exit_code == 0 and "0 removed from the index" in result.output
    assert "the folder is empty, but the index holds 3 files in it: taken for an unmounted share" in result.output
    assert set(index_rows(tmp_path / "index.sqlite")) == indexed
    lib.rmdir()
    shutil.move(away, lib)  # mounted again: nothing to do
    result = runner.invoke(cli, ["--config", config, "scan"])
    assert "0 classified" in result.output and "0 from the index" in result.output and "3 unchanged" in result.output
    for path in list(lib.iterdir()):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = runner.invoke(cli, ["--config", config, "scan", "--prune"])  # they really were deleted
    assert result.exit_code == 0 and "3 removed from the index" in result.output
    assert index_rows(tmp_path / "index.sqlite") == {}


@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_a_chain_of_1100_nested_folders_is_scanned_and_watched(
    tmp_path: Path, photo: Path, write_config: Callable[..., Path], use_model: CountingClassifier, mode: str
) -> None:
    """Python 3.11's os.walk recursed once per level: RecursionError in the scan and in watchdog."""
    from tagger.config import WatchConfig
    from tagger.daemon.watch import Watcher
    from tagger.daemon.workqueue import WorkQueue

    lib = tmp_path / "library"
    chain = [lib]
    for _ in range(1100):
        chain.append(chain[-1] / "d")
    for folder in chain:  # not mkdir(parents=True): it recurses too
        folder.mkdir()
    shutil.copy(photo, lib / "top.jpg")
    shutil.copy(photo, chain[-1] / "bottom.jpg")
    try:
        result = CliRunner().invoke(cli, ["--config", str(write_config()), "scan"])
        assert result.exit_code == 0 and result.output.startswith("2 images:"), result.output
        queue = WorkQueue(0.3, 10, 0.5, 1000)
        watcher = Watcher(queue, WatchConfig(mode=mode, poll_interval=0.3))
        try:
            watcher.watch([lib])
            shutil.copy(photo, lib / "new.jpg")
            work = queue.next_work(16, timeout=10)
            assert work is not None and work.paths == (lib / "new.jpg",)
        finally:
            watcher.stop()
    finally:  # shutil.rmtree (pytest's clean-up) recurses once per level as well
        for path in chain[-1].iterdir():  # the photo and its sidecar
            path.unlink()
        for folder in reversed(chain[1:]):
            folder.rmdir()


def test_only_a_path_that_is_certainly_absent_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_bytes(b"x")
    assert fileio_module.is_gone(tmp_path / "none") and fileio_module.is_gone(tmp_path / "file" / "below")
    assert not fileio_module.is_gone(tmp_path / "file")

    def stale(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ESTALE, "Stale file handle", os.fspath(path))

    monkeypatch.setattr(os, "lstat", stale)
    assert not fileio_module.is_gone(tmp_path / "none")


@pytest.fixture
def no_blocking() -> Iterator[None]:
    """Reading a FIFO without O_NONBLOCK waits for a writer forever: fail in 30 s instead of hanging."""

    def blocked(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked for 30 s: a FIFO was opened to read")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_fifos_at_xmp_sidecar_and_config_names_are_refused_without_blocking(
    tmp_path: Path, photo: Path, write_config: Callable[..., Path], use_model: CountingClassifier, no_blocking: None
) -> None:
    """Another program's FIFO where tagger reads a small file of its own kind: the scan hung on it."""
    lib = tmp_path / "library"
    lib.mkdir()
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(photo, lib / name)
    os.mkfifo(lib / "a.jpg.xmp")
    config = write_config(xmp={"enabled": True})
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "scan"])
    assert result.exit_code == 0, result.output
    assert f"{lib / 'a.jpg.xmp'}: cannot read: not a regular file: a FIFO (named pipe)" in result.output
    assert (lib / "b.jpg.xmp").is_file() and sidecar_path(lib / "a.jpg").is_file()

    sidecar_path(lib / "b.jpg").unlink()
    os.mkfifo(sidecar_path(lib / "b.jpg"))  # at a deleted image's sidecar name: not tagger's to remove
    (lib / "b.jpg").unlink()
    result = runner.invoke(cli, ["--config", str(config), "scan"])
    assert result.exit_code == 0 and "1 removed from the index" in result.stdout
    assert sidecar_path(lib / "b.jpg").exists()

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    result = runner.invoke(cli, ["--config", str(fifo), "stats"])
    assert result.exit_code != 0 and f"{fifo}: cannot read config file: not a regular file: a FIFO" in result.output

    index = tmp_path / "fifo.sqlite"
    os.mkfifo(index)  # SQLite would wait for its header forever
    for command in (["stats"], ["query", "cat"], ["scan"]):
        result = runner.invoke(cli, ["--config", str(write_config(index=str(index))), *command])
        assert result.exit_code != 0 and f"{index}: the index is not a regular file but a FIFO" in result.output


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_scan_stops_on_a_signal_after_the_batch_with_a_summary(
    tmp_path: Path,
    photo: Path,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    counting: CountingClassifier,
    sig: signal.Signals,
    code: int,
) -> None:
    lib = tmp_path / "library"
    lib.mkdir()
    for i in range(8):
        (lib / f"{i}.jpg").write_bytes(photo.read_bytes() + bytes([i]))  # distinct contents

    class SignalledOnce(CountingClassifier):
        def predict(self, batch: Any, top_k: int, near_tie: float = 0.0) -> Any:
            if not self.images:
                os.kill(os.getpid(), sig)  # as if sent while the first batch runs
            return super().predict(batch, top_k, near_tie)

    model = SignalledOnce(counting.inner)
    monkeypatch.setattr(Classifier, "from_settings", classmethod(lambda cls, choice: model))
    config = write_config(model={"batch_size": 2})
    result = CliRunner().invoke(cli, ["--config", str(config), "scan"])
    assert result.exit_code == code, result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert result.stdout.startswith("8 images: ")
    assert f"stopped by {sig.name}" in result.stderr
    assert 2 <= model.images < 8  # the batch in hand (and those decoded beside it) were finished
    rows = index_rows(tmp_path / "index.sqlite")
    assert all(status == "tagged" and sidecar_path(Path(p)).exists() for p, (status, _) in rows.items())


# -- a full disk -----------------------------------------------------------------------------


def _disk_full_on_save(monkeypatch: pytest.MonkeyPatch, full: list[bool]) -> None:
    """Writes of file rows fail as SQLite fails them when the disk is full, while full[0] is True."""
    real = Index.save_file

    def save_file(self: Index, *args: Any, **kwargs: Any) -> None:
        if full[0]:
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = 13  # type: ignore[attr-defined]
            raise error
        real(self, *args, **kwargs)

    monkeypatch.setattr(Index, "save_file", save_file)


def test_scan_on_a_full_disk_is_one_clear_error_and_the_next_scan_finishes(
    tmp_path: Path,
    photo: Path,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    use_model: CountingClassifier,
) -> None:
    lib = tmp_path / "library"
    lib.mkdir()
    shutil.copy(photo, lib / "a.jpg")
    config = write_config()
    full = [True]
    _disk_full_on_save(monkeypatch, full)
    result = CliRunner().invoke(cli, ["--config", str(config), "scan"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("tagger: error:")]
    assert len(lines) == 1
    assert "the disk holding the index" in lines[0] and "is full" in lines[0]
    assert f"the tags of {lib / 'a.jpg'} was not written" in lines[0]
    assert not sidecar_path(lib / "a.jpg").exists()  # no sidecar without its index row
    full[0] = False
    again = CliRunner().invoke(cli, ["--config", str(config), "scan"])
    assert again.exit_code == 0 and index_rows(tmp_path / "index.sqlite")[str(lib / "a.jpg")][0] == "tagged"
    assert sidecar_path(lib / "a.jpg").exists()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB tmpfs, where this machine lets the tests mount one (root, no container limits)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True
        ).returncode == 0
    except OSError:
        mounted = False
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (not root, or not allowed): the simulated full disk tests cover it")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Use up every free byte of `disk`; delete the returned file to free them."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_really_full_disk_under_the_index(
    tmp_path: Path, tiny_disk: Path, photo: Path, write_config: Callable[..., Path], use_model: CountingClassifier
) -> None:
    lib = tmp_path / "library"
    lib.mkdir()
    config = write_config(index=str(tiny_disk / "index.sqlite"))
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", str(config), "scan"]).exit_code == 0  # the index exists, empty
    for i in range(3):
        (lib / f"{i}.jpg").write_bytes(photo.read_bytes() + bytes([i]))
    filler = fill(tiny_disk)
    result = runner.invoke(cli, ["--config", str(config), "scan"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("tagger: error:")]
    assert len(errors) == 1, (result.output, result.exc_info)
    assert f"the disk holding the index ({tiny_disk}" in errors[0] and "is full" in errors[0]
    rows = index_rows(tiny_disk / "index.sqlite")
    for i in range(3):  # a sidecar only beside an index row
        assert sidecar_path(lib / f"{i}.jpg").exists() == (str(lib / f"{i}.jpg") in rows)
    filler.unlink()
    again = runner.invoke(cli, ["--config", str(config), "scan"])
    assert again.exit_code == 0, again.output
    rows = index_rows(tiny_disk / "index.sqlite")
    assert all(rows[str(lib / f"{i}.jpg")][0] == "tagged" and sidecar_path(lib / f"{i}.jpg").exists() for i in range(3))


def test_a_daemon_started_on_a_really_full_disk_waits_for_space(
    tmp_path: Path,
    tiny_disk: Path,
    photo: Path,
    write_config: Callable[..., Path],
    counting: CountingClassifier,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(daemon_module, "DISK_RETRY_SECONDS", 0.2)
    config = load_config(write_config(index=str(tiny_disk / "index.sqlite"), watch={"stable_seconds": 0.3}))
    filler = fill(tiny_disk)
    d = daemon_module.Daemon(config, None, classifier=counting)  # type: ignore[arg-type]
    thread = daemon_module.threading.Thread(target=d.run, name="tagger-daemon")
    with caplog.at_level(logging.ERROR, logger="tagger.daemon.service"):
        thread.start()
        try:
            wait_until(lambda: "is full" in caplog.text)
            assert thread.is_alive() and not d.ready.is_set()
            filler.unlink()
            assert d.ready.wait(30)
            shutil.copy(photo, config.folders[0] / "a.jpg")
            wait_until(lambda: index_rows(config.index).get(str(config.folders[0] / "a.jpg"), ("",))[0] == "tagged")
        finally:
            d.request_stop()
            thread.join(30)
    assert caplog.text.count("is full") == 1


def test_a_full_disk_for_a_sidecar_is_noted_and_leaves_no_temp_file(
    tmp_path: Path,
    photo: Path,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    use_model: CountingClassifier,
) -> None:
    lib = tmp_path / "library"
    lib.mkdir()
    shutil.copy(photo, lib / "a.jpg")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio_module.os, "fsync", no_space)
    result = CliRunner().invoke(cli, ["--config", str(write_config()), "scan"])
    assert result.exit_code == 0
    status, error = index_rows(tmp_path / "index.sqlite")[str(lib / "a.jpg")]
    assert status == "tagged" and error is not None and f"the disk holding {lib} is full" in error
    assert sorted(p.name for p in lib.iterdir()) == ["a.jpg"]


def test_the_daemon_waits_out_a_full_disk_and_goes_on(
    start_daemon: Callable[..., Running],
    photo: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(daemon_module, "DISK_RETRY_SECONDS", 0.2)
    full = [True]
    _disk_full_on_save(monkeypatch, full)
    r = start_daemon()
    with caplog.at_level(logging.ERROR, logger="tagger.daemon.service"):
        shutil.copy(photo, r.library / "a.jpg")
        wait_until(lambda: "is full" in caplog.text)
    assert caplog.text.count("is full") == 1  # said once, then retried quietly
    assert r.thread.is_alive()
    full[0] = False
    wait_until(lambda: index_rows(r.index).get(str(r.library / "a.jpg"), ("",))[0] == "tagged")
    assert sidecar_path(r.library / "a.jpg").exists()


# -- daemon ----------------------------------------------------------------------------------


def test_daemon_tags_odd_names_refuses_special_files_and_stops(
    start_daemon: Callable[..., Running], photo: Path, tmp_path: Path
) -> None:
    r = start_daemon()
    files = hostile(r.library, photo, tmp_path / "outside")
    expected = {str(p) for p in files.values()} | {str(r.library / n) for n in REFUSED}
    wait_until(lambda: expected <= set(index_rows(r.index)))
    rows = index_rows(r.index)
    for path in files.values():
        assert rows[str(path)][0] == "tagged", path
    for name, reason in REFUSED.items():
        status, error = rows[str(r.library / name)]
        assert status == "failed" and error is not None and reason in error
    def settled() -> bool:  # the status file is rewritten after the index: wait for the one that counts them
        status = json.loads(daemon_module.status_path(r.index).read_text())
        return bool(status["queue"] == 0 and status["failed"] >= len(REFUSED))

    wait_until(settled, timeout=30)
    r.daemon.request_stop()
    r.thread.join(30)
    assert not r.thread.is_alive()  # the FIFO never held it


def test_a_scan_is_refused_beside_a_running_daemon(
    start_daemon: Callable[..., Running], use_model: CountingClassifier
) -> None:
    r = start_daemon()
    result = CliRunner().invoke(cli, ["--config", str(r.config), "scan"])
    assert result.exit_code == 1
    assert f"`tagger run` (pid {os.getpid()}) keeps this index up to date" in result.stderr


def test_a_daemon_waits_for_a_running_scan(
    tmp_path: Path, write_config: Callable[..., Path], counting: CountingClassifier, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(write_config())
    d = daemon_module.Daemon(config, None, classifier=counting)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="tagger.library.lock"):
        with index_lock(config.index, "scan"):
            thread = daemon_module.threading.Thread(target=d.run, name="tagger-daemon")
            thread.start()
            wait_until(lambda: "waiting for it to finish" in caplog.text)
            assert not d.ready.is_set()
        assert d.ready.wait(30)
    d.request_stop()
    thread.join(30)
    assert not thread.is_alive()


# -- viewer ----------------------------------------------------------------------------------


@pytest.fixture
def odd_viewer(
    tmp_path: Path, photo: Path, write_config: Callable[..., Path], use_model: CountingClassifier
) -> Iterator[tuple[Any, dict[str, Path]]]:
    files = hostile(tmp_path / "library", photo, tmp_path / "outside")
    config = write_config()
    assert CliRunner().invoke(cli, ["--config", str(config), "scan"]).exit_code == 0
    app = create_app(load_config(config), use_model.inner)
    app.testing = True
    yield app, files
    app.extensions["tagger"].close()


def test_viewer_opens_every_row_it_lists(odd_viewer: tuple[Any, dict[str, Path]]) -> None:
    app, files = odd_viewer
    client = app.test_client()
    listed = client.get("/api/images?limit=500").json["images"]
    assert {i["path"] for i in listed} == {str(p) for p in files.values()}
    for item in listed:
        for link in ("self", "page", "original", "thumbnail"):
            response = client.get(item["links"][link], buffered=True)
            assert response.status_code == 200, (item["path"], link)
        assert client.get(item["links"]["self"]).json["path"] == item["path"]
    original = next(i for i in listed if i["path"] == str(files["newline"]))["links"]["original"]
    assert "%0A" in original
    grid = client.get("/?sort=name").get_data(as_text=True)
    assert "×" in grid  # every file holds the same photo: one tile, with its count
    page = next(i for i in listed if i["path"] == str(files["bytes"]))["links"]["page"]
    assert "\\xff\\xfe.jpg" in client.get(page).get_data(as_text=True)  # shown, its bytes as escapes
    folder = client.get("/", query_string={"folder": f"{files['bytes_folder'].parent}".replace("\udce9", "%E9")})
    assert folder.status_code == 200 and "inside.jpg" in folder.get_data(as_text=True)


def test_viewer_never_opens_a_special_file(odd_viewer: tuple[Any, dict[str, Path]]) -> None:
    app, files = odd_viewer
    client = app.test_client()
    library = files["plain"].parent
    for name in ("pipe.jpg", "sock.jpg"):
        assert client.get(f"/original/{str(library / name).lstrip('/')}").status_code == 404
        assert client.get(f"/image/{str(library / name).lstrip('/')}").status_code == 200  # its failure, shown
    for name in ("zero.jpg", "out.jpg"):  # a symlink leading out: refused, as the scan refused it
        assert client.get(f"/original/{str(library / name).lstrip('/')}").status_code == 403
    files["plain"].unlink()
    os.mkfifo(files["plain"])  # a tagged file swapped for a FIFO since the scan
    assert client.get(f"/original/{str(files['plain']).lstrip('/')}").status_code == 404


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("model:\n  top_k: 3\n  top_k: 4\n", ["line 3", "key 'top_k' appears twice (first on line 2)"]),
        ("folders: [\nmodel: {}\n", ["not valid YAML: line 3", "flow sequence that starts on line 1"]),
        (
            "modle: {}\nmodel: {top_kk: 3}\nweb: {hots: x}\n",
            ["3 unknown keys", "'modle'", "'model.top_kk'", "'web.hots'"],
        ),
        ("decode: {max_file_mb: 0}\n", ["decode.max_file_mb", "between 1"]),
        ("model: " + "[" * 5000 + "]" * 5000 + "\n", ["not valid YAML: "]),  # libyaml stops at 1000 levels
    ],
)
def test_config_mistakes_are_one_line_naming_the_file(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "my-config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, require_folders=False)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and "<unicode string>" not in message
    for word in words:
        assert word in message


def test_yaml_nested_past_pythons_recursion_limit_is_a_config_error(tmp_path: Path) -> None:
    """400 brackets are within libyaml's limit, but its constructor recursed past Python's default
    1000 frames: a RecursionError escaped. (tagger.daemon.watch raises the limit for watchdog, so it is
    set back to the default here.)"""
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 400 + "]" * 400 + "\n")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        with pytest.raises(ConfigError, match="not valid YAML: nested too deeply"):
            load_config(path, require_folders=False)
    finally:
        sys.setrecursionlimit(limit)


def test_max_file_mb_is_read_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"decode": {"max_file_mb": 12}}))
    assert load_config(path, require_folders=False).decode.max_file_bytes == 12 * 1024 * 1024


def test_a_big_file_that_is_no_image_is_refused_unread(tmp_path: Path, photo: Path) -> None:
    """Under the byte limit but over 32 MB: its first bytes decide, so 100 MB of something else
    named .jpg costs 16 bytes of reading, not 100 MB of memory; a big real image is still read."""
    from tagger.errors import DecodeError
    from tagger.fileio import SNIFF_ABOVE, read_limited

    video = tmp_path / "clip.jpg"
    with video.open("wb") as fh:
        fh.write(b"\x00\x00\x00\x18moov" + b"\0" * 8)  # a video's first box: no image format's signature
        fh.truncate(SNIFF_ABOVE + 1)
    with pytest.raises(DecodeError, match="not an image: 32 MB whose first bytes are no image format's"):
        read_limited(video, 200 * fileio_module.MB)
    big_jpeg = tmp_path / "big.jpg"
    with big_jpeg.open("wb") as fh:
        fh.write(photo.read_bytes())
        fh.truncate(SNIFF_ABOVE + 1)  # a JPEG with a long tail: read whole, as the decoder needs it
    data = read_limited(big_jpeg, 200 * fileio_module.MB)
    assert len(data) == SNIFF_ABOVE + 1 and data.startswith(b"\xff\xd8\xff")
