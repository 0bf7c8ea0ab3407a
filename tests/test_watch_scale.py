"""The watcher at scale: the inotify watch limit reached at start or later (exactly the folders
past it polled, said in the log and the status, inotify again on reload), polling by folder
mtimes (only changed folders listed), and the start-up reconcile's progress in the status.

The limit is simulated through watchdog's own code path (its `inotify_add_watch` answers ENOSPC
after N watches), and, where user namespaces allow it, reached for real in a child process with
a lowered per-namespace limit (/proc/sys/user/max_inotify_watches: the system-wide
fs.inotify.max_user_watches, which other processes of this machine share, is left alone).
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import CountingClassifier
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from tagger.cli import cli
from tagger.config import WatchConfig, load_config
from tagger.daemon.poller import FolderPoller
from tagger.daemon.progress import ReconcileProgress
from tagger.daemon.service import Daemon, status_path
from tagger.daemon.systemd import Notifier
from tagger.daemon.watch import Watcher
from tagger.daemon.workqueue import Reconcile, TagFiles, Work, WorkQueue

FAST_WATCH = {"stable_seconds": 0.3, "delete_grace_seconds": 0.5, "poll_interval": 0.3, "open_timeout": 10}


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


class WatchBudget:
    """watchdog's `inotify_add_watch`, answering ENOSPC once `left` watches were made, as the kernel does."""

    def __init__(self, left: int) -> None:
        from watchdog.observers import inotify_c

        self.left = left
        self.real = inotify_c.inotify_add_watch

    def __call__(self, fd: int, path: bytes, mask: int) -> int:
        if self.left <= 0:
            ctypes.set_errno(errno.ENOSPC)
            return -1
        wd = int(self.real(fd, path, mask))
        if wd >= 0:
            self.left -= 1
        return wd


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> WatchBudget:
    from watchdog.observers import inotify_c

    limit = WatchBudget(10**9)
    monkeypatch.setattr(inotify_c, "inotify_add_watch", limit)
    return limit


def library(root: Path, folders: int, *, old: bool = True) -> list[Path]:
    subs = [root / f"f{i:02d}" for i in range(folders)]
    for sub in subs:
        sub.mkdir(parents=True)
    if old:  # not "racy": changed long before the first poll
        for folder in [root, *subs]:
            os.utime(folder, (time.time() - 60, time.time() - 60))
    return subs


def works(queue: WorkQueue, timeout: float = 3.0) -> list[Work]:
    """What the queue hands out until it stays quiet for a second (or `timeout` passes)."""
    found: list[Work] = []
    deadline, quiet = time.monotonic() + timeout, time.monotonic() + timeout
    while time.monotonic() < min(deadline, quiet):
        work = queue.next_work(64, 0.2)
        if work is not None:
            found.append(work)
            quiet = time.monotonic() + 1.0
    return found


def tagged(found: list[Work]) -> set[Path]:
    return {p for w in found if isinstance(w, TagFiles) for p in w.paths}


@pytest.fixture
def watcher() -> Iterator[Callable[[WatchConfig], tuple[Watcher, WorkQueue]]]:
    made: list[Watcher] = []

    def make(config: WatchConfig) -> tuple[Watcher, WorkQueue]:
        queue = WorkQueue(0.2, 10, 0.2, 10_000)
        made.append(Watcher(queue, config))
        return made[-1], queue

    yield make
    for w in made:
        w.stop()


# -- the watch limit ------------------------------------------------------------------------


def test_folders_past_the_limit_at_start_are_polled_and_only_they(
    tmp_path: Path, budget: WatchBudget, watcher: Callable[..., tuple[Watcher, WorkQueue]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "lib"
    subs = library(root, 10)
    budget.left = 7  # the root and 6 of the 10 folders
    w, queue = watcher(WatchConfig(mode="inotify", poll_interval=0.2))
    with caplog.at_level(logging.WARNING):
        w.watch([root])
    polled = set(w._poller.folders())
    assert len(polled) == 4 and polled < set(subs)  # exactly the four inotify refused
    assert w.folders == {root: "inotify"} and w.past_limit() == {root: 4}
    first = min(polled)
    assert any(str(first) in r.getMessage() and "fs.inotify.max_user_watches" in r.getMessage() and "SIGHUP" in r.getMessage()
               for r in caplog.records if r.name == "tagger.daemon.watch")
    assert not [r for r in caplog.records if r.name.startswith("watchdog")]  # our line, not watchdog's too
    watched = next(s for s in subs if s not in polled)
    (first / "polled.jpg").write_bytes(b"jpeg")
    (watched / "inotify.jpg").write_bytes(b"jpeg")
    assert tagged(works(queue)) == {first / "polled.jpg", watched / "inotify.jpg"}


def test_a_folder_made_past_the_limit_while_running_is_polled_and_said(
    tmp_path: Path, budget: WatchBudget, watcher: Callable[..., tuple[Watcher, WorkQueue]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "lib"
    library(root, 3)
    w, queue = watcher(WatchConfig(mode="inotify", poll_interval=0.2))
    w.watch([root])
    assert w.past_limit() == {}
    budget.left = 0
    with caplog.at_level(logging.WARNING):
        (root / "new").mkdir()
        wait_until(lambda: w.past_limit() == {root: 1})
    assert set(w._poller.folders()) == {root / "new"}
    assert f"{root / 'new'}: inotify watch limit reached" in caplog.text
    assert Reconcile(root / "new") in works(queue)  # what landed before it was polled
    time.sleep(0.3)
    (root / "new" / "later.jpg").write_bytes(b"jpeg")
    assert tagged(works(queue)) == {root / "new" / "later.jpg"}
    (root / "new" / "deeper").mkdir()  # inside a polled folder: inotify never hears of it; polled too
    wait_until(lambda: root / "new" / "deeper" in w._poller.folders())
    time.sleep(0.3)
    (root / "new" / "deeper" / "x.jpg").write_bytes(b"jpeg")
    assert root / "new" / "deeper" / "x.jpg" in tagged(works(queue))


def test_a_reload_watches_with_inotify_again_once_the_limit_allows(
    tmp_path: Path, budget: WatchBudget, watcher: Callable[..., tuple[Watcher, WorkQueue]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "lib"
    subs = library(root, 6)
    budget.left = 3
    w, queue = watcher(WatchConfig(mode="inotify", poll_interval=0.2))
    w.watch([root])
    assert w.past_limit() == {root: 4}
    w.watch([root])  # a reload with the limit still there: still polled, nothing lost
    assert w.past_limit() == {root: 4}
    budget.left = 2  # raised, but not enough for all
    w.watch([root])
    assert w.past_limit() == {root: 2}
    budget.left = 100
    with caplog.at_level(logging.INFO):
        w.watch([root])
    assert w.past_limit() == {} and w._poller.folders() == []
    assert "watched with inotify again, all of it" in caplog.text
    for sub in subs:
        (sub / "a.jpg").write_bytes(b"jpeg")
    assert tagged(works(queue)) == {sub / "a.jpg" for sub in subs}


def test_a_folder_refused_whole_is_polled_then_watched_again(
    tmp_path: Path, budget: WatchBudget, watcher: Callable[..., tuple[Watcher, WorkQueue]]
) -> None:
    root = tmp_path / "lib"
    subs = library(root, 3)
    budget.left = 0
    w, queue = watcher(WatchConfig(mode="inotify", poll_interval=0.2))
    w.watch([root])
    assert w.folders == {root: "polling"} and w.past_limit() == {root: 4}
    assert works(queue, 1) == [Reconcile(root)]
    (subs[0] / "a.jpg").write_bytes(b"jpeg")
    assert tagged(works(queue)) == {subs[0] / "a.jpg"}
    budget.left = 100
    w.watch([root])
    assert w.folders == {root: "inotify"} and w.past_limit() == {} and w._poller.folders() == []
    (subs[1] / "b.jpg").write_bytes(b"jpeg")
    assert tagged(works(queue)) == {subs[1] / "b.jpg"}


REAL_LIMIT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from tagger.config import WatchConfig
    from tagger.daemon.watch import Watcher
    from tagger.daemon.workqueue import TagFiles, WorkQueue

    limit = Path("/proc/sys/user/max_inotify_watches")
    root = Path(sys.argv[1])
    limit.write_text(sys.argv[2])
    queue = WorkQueue(0.2, 10, 0.2, 10000)
    watcher = Watcher(queue, WatchConfig(mode="inotify", poll_interval=0.2))
    watcher.watch([root])
    polled = sorted(map(str, watcher._poller.folders()))
    target = Path(polled[0])
    (target / "new.jpg").write_bytes(b"jpeg")
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not seen:
        work = queue.next_work(64, 0.2)
        if isinstance(work, TagFiles):
            seen += [str(p) for p in work.paths]
    limit.write_text("100000")
    watcher.watch([root])
    after = sorted(map(str, watcher._poller.folders()))
    watcher.stop()
    print(json.dumps({"polled": polled, "seen": seen, "after": after, "past": {str(k): v for k, v in watcher.past_limit().items()}}))
    """
)


def test_the_real_kernel_limit_in_a_user_namespace(tmp_path: Path) -> None:
    """The kernel's own ENOSPC: a child process in its own user namespace, whose watch limit is
    lowered to 9 (the root and 8 of 20 folders), then raised and reloaded."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-U", "-r", "true"], check=False, capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("user namespaces are not available here (unshare -U -r): only the simulated limit is tested")
    root = tmp_path / "lib"
    library(root, 20)
    script = tmp_path / "limit.py"
    script.write_text(REAL_LIMIT)
    run = subprocess.run([unshare or "unshare", "-U", "-r", sys.executable, str(script), str(root), "9"],
                         check=False, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert len(result["polled"]) == 12 and all(Path(p).parent == root for p in result["polled"])
    assert result["seen"] == [str(Path(result["polled"][0]) / "new.jpg")]
    assert result["after"] == []
    assert "inotify watch limit reached" in run.stderr


# -- polling by folder mtimes -----------------------------------------------------------------


class Events(FileSystemEventHandler):
    def __init__(self) -> None:
        self.seen: list[FileSystemEvent] = []

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.seen.append(event)

    def take(self) -> list[tuple[str, str, str]]:
        seen, self.seen = self.seen, []
        return [(type(e).__name__, str(e.src_path), str(e.dest_path)) for e in seen]


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The folders the poller lists, in order."""
    listed: list[bytes] = []
    real = os.scandir

    def scandir(path: Any) -> Any:
        listed.append(path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # the poller lists through os.scandir
    return listed


def test_a_poll_lists_only_the_folders_that_changed(tmp_path: Path, listings: list[bytes]) -> None:
    root = tmp_path / "lib"
    subs = library(root, 50)
    for sub in subs:
        (sub / "old.jpg").write_bytes(b"x")
        os.utime(sub, (time.time() - 60, time.time() - 60))
    events, poller = Events(), FolderPoller(0.1)
    poller.add(root, events, subfolders=True)
    assert len(listings) == 51
    listings.clear()
    poller.poll()
    assert listings == [] and events.take() == []
    (subs[7] / "new.jpg").write_bytes(b"x")
    poller.poll()
    assert listings == [os.fsencode(subs[7])]
    assert events.take() == [("FileCreatedEvent", str(subs[7] / "new.jpg"), "")]
    poller.poll()  # changed under 2 s ago: listed again (a second change may share its mtime), nothing new
    assert events.take() == []


def test_a_folder_whose_mtime_is_put_back_is_still_seen(tmp_path: Path) -> None:
    """rsync -a adds a file, then sets the folder's mtime back to the source's: its ctime still moved."""
    root = tmp_path / "lib"
    (sub,) = library(root, 1)
    before = os.stat(sub)
    events, poller = Events(), FolderPoller(0.1)
    poller.add(root, events, subfolders=True)
    (sub / "synced.jpg").write_bytes(b"x")
    os.utime(sub, ns=(before.st_atime_ns, before.st_mtime_ns))
    poller.poll()
    assert events.take() == [("FileCreatedEvent", str(sub / "synced.jpg"), "")]


def test_polled_moves_deletes_and_new_folders(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    a, b = library(root, 2)
    (a / "one.jpg").write_bytes(b"1")
    (a / "two.jpg").write_bytes(b"2")
    (a / "inner").mkdir()
    events, poller = Events(), FolderPoller(0.1)
    poller.add(root, events, subfolders=True)
    (a / "one.jpg").rename(b / "one.jpg")  # across folders: a move, not a delete and a new file
    (a / "two.jpg").unlink()
    (a / "inner").rename(b / "inner")
    (root / "fresh").mkdir()
    poller.poll()
    assert sorted(events.take()) == sorted([
        (FileMovedEvent.__name__, str(a / "one.jpg"), str(b / "one.jpg")),
        (DirMovedEvent.__name__, str(a / "inner"), str(b / "inner")),
        (FileDeletedEvent.__name__, str(a / "two.jpg"), ""),
        (DirCreatedEvent.__name__, str(root / "fresh"), ""),
    ])
    assert {b / "inner", root / "fresh"} <= set(poller.folders()) and a / "inner" not in poller.folders()
    (b / "inner" / "x.jpg").write_bytes(b"x")
    (root / "fresh" / "y.jpg").write_bytes(b"y")
    poller.poll()
    assert sorted(events.take()) == sorted([
        (FileCreatedEvent.__name__, str(b / "inner" / "x.jpg"), ""),
        (FileCreatedEvent.__name__, str(root / "fresh" / "y.jpg"), ""),
    ])


def test_a_polled_folder_that_goes_and_comes_back(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    library(root, 1)
    (root / "a.jpg").write_bytes(b"a")
    events, poller = Events(), FolderPoller(0.1)
    poller.add(root, events, subfolders=True)
    root.rename(tmp_path / "away")
    poller.poll()
    poller.poll()
    assert events.take() == [("DirDeletedEvent", str(root), "")]  # once, and its files are not "deleted"
    (tmp_path / "away").rename(root)
    poller.poll()
    assert events.take() == [("DirCreatedEvent", str(root), "")]  # back: the handler reconciles it


# -- the start-up reconcile's progress -----------------------------------------------------------


def test_progress_lines() -> None:
    now = [100.0]
    progress = ReconcileProgress([Path("/a"), Path("/b")], 300_000, clock=lambda: now[0], wall=lambda: 0.0)
    assert progress.line() == "reconciling: 0 of ~300,000 files checked"
    progress.checked(120_000)
    assert progress.line() == "reconciling: 120,000 of ~300,000 files checked"
    assert not progress.folder_done(Path("/a")) and not progress.folder_done(Path("/elsewhere"))
    now[0] = 127.0
    progress.checked(180_500)
    assert progress.folder_done(Path("/b"))
    assert progress.line() == f"up to date since {time.strftime('%H:%M', time.localtime(0))}"
    assert progress.done_line() == "library up to date: 300,500 files checked in 27.0 s"
    assert ReconcileProgress([Path("/a")], 0).line() == "reconciling: 0 files checked"


class NotifySocket:
    """systemd's end of sd_notify: every datagram the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue

    def statuses(self) -> list[str]:
        return [line[7:] for m in list(self.messages) for line in m.splitlines() if line.startswith("STATUS=")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_the_daemon_says_how_far_the_reconcile_is_and_when_the_library_is_up_to_date(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], counting: CountingClassifier,
    budget: WatchBudget, caplog: pytest.LogCaptureFixture,
) -> None:
    lib = tmp_path / "library"
    for i, sub in enumerate(library(lib, 4)):
        shutil.copy(sample_jpegs[i % len(sample_jpegs)], sub / "p.jpg")
        os.utime(sub / "p.jpg", (time.time() - 60, time.time() - 60))  # not "still being written"
    config_path = write_config(watch={**FAST_WATCH, "mode": "inotify"})
    config = load_config(config_path)
    budget.left = 3  # the library and 2 of its 4 folders
    notify = NotifySocket(tmp_path / "notify")
    daemon = Daemon(config, config_path, notifier=Notifier(str(notify.path)), classifier=counting)  # type: ignore[arg-type]
    thread = threading.Thread(target=daemon.run, name="tagger-daemon")
    try:
        with caplog.at_level(logging.INFO):
            thread.start()
            assert daemon.ready.wait(30)
            wait_until(lambda: daemon.progress is not None and daemon.progress.state == "up to date", 60)
            wait_until(lambda: any("up to date since" in s for s in notify.statuses()))
        assert "library up to date: 4 files checked in" in caplog.text
        ready = next(m for m in notify.messages if "READY=1" in m)
        assert "STATUS=reconciling: " in ready  # READY at once; the status does not claim more
        assert any(s.startswith("up to date since") and "2 folders polled: inotify watch limit reached" in s
                   for s in notify.statuses())
        wait_until(lambda: json.loads(status_path(config.index).read_text()).get("library", {}).get("state") == "up to date")
        status = json.loads(status_path(config.index).read_text())
        assert status["library"]["checked"] == 4 and status["library"]["folders_left"] == []
        assert status["watch_limit"]["polled_folders"] == {str(lib): 2}
        shown = CliRunner().invoke(cli, ["--config", str(config_path), "status"])
        assert shown.exit_code == 0, shown.output
        assert "library up to date since" in shown.output
        assert f"{lib}: inotify, 2 folders polled (inotify watch limit)" in shown.output
        assert "fs.inotify.max_user_watches" in shown.output
        raw = CliRunner().invoke(cli, ["--config", str(config_path), "status", "--json"])
        assert json.loads(raw.output)["library"]["state"] == "up to date"
        budget.left = 100  # the limit raised, then SIGHUP: inotify again (the CLI runs took the log over: the status says it)
        daemon.request_reload()
        wait_until(lambda: "watch_limit" not in json.loads(status_path(config.index).read_text()), 30)
        assert json.loads(status_path(config.index).read_text())["folders"] == {str(lib): "inotify"}
        assert not any("folders polled" in s for s in notify.statuses()[-1:])
    finally:
        daemon.request_stop()
        thread.join(30)
        notify.close()
    assert not thread.is_alive()
