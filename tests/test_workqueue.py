"""The work queue and the event filters, without a model: de-duplication, finished files, moves, limits."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tagger.config import WatchConfig
from tagger.daemon.watch import choose_mode, filesystem_type, is_candidate
from tagger.daemon.workqueue import SETTLE_SECONDS, Delete, Move, Reconcile, TagFiles, WorkQueue


def make_queue(**kw: float) -> WorkQueue:
    args = {"stable_seconds": 0.3, "open_timeout": 2.0, "delete_grace": 0.3, "limit": 1000}
    args.update(kw)
    return WorkQueue(args["stable_seconds"], args["open_timeout"], args["delete_grace"], int(args["limit"]))


def old_file(path: Path) -> Path:
    path.write_bytes(b"x")
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def test_ten_changes_in_a_second_are_one_entry(tmp_path: Path) -> None:
    q = make_queue()
    f = old_file(tmp_path / "a.jpg")
    for _ in range(10):
        q.changed(f, tmp_path)
    work = q.next_work(16, timeout=2)
    assert work is not None and isinstance(work, TagFiles) and work.paths == (f,)
    assert q.next_work(16, timeout=0.2) is None


def test_a_file_still_being_written_waits_for_close(tmp_path: Path) -> None:
    q = make_queue()
    f = old_file(tmp_path / "a.jpg")
    q.changed(f, tmp_path, writing=True)  # modified, no close yet
    assert q.next_work(16, timeout=0.8) is None
    q.changed(f, tmp_path, closed=True)
    started = time.monotonic()
    work = q.next_work(16, timeout=2)
    assert work is not None and work.paths == (f,)
    assert time.monotonic() - started < SETTLE_SECONDS + 0.5


def test_without_close_events_the_mtime_must_be_stable(tmp_path: Path) -> None:
    q = make_queue(stable_seconds=0.5)
    f = tmp_path / "a.jpg"
    f.write_bytes(b"fresh")  # mtime is now
    q.changed(f, tmp_path)
    started = time.monotonic()
    work = q.next_work(16, timeout=3)
    assert work is not None and work.paths == (f,)
    assert time.monotonic() - started >= 0.45


def test_writer_that_never_closes_is_tagged_after_open_timeout(tmp_path: Path) -> None:
    q = make_queue(open_timeout=0.6)
    f = old_file(tmp_path / "a.jpg")
    q.changed(f, tmp_path, writing=True)
    work = q.next_work(16, timeout=3)
    assert work is not None and work.paths == (f,)


def test_batch_is_not_held_back_to_fill(tmp_path: Path) -> None:
    q = make_queue()
    f = old_file(tmp_path / "a.jpg")
    q.changed(f, tmp_path, closed=True)
    started = time.monotonic()
    work = q.next_work(64, timeout=5)
    assert work is not None and len(work.paths) == 1
    assert time.monotonic() - started < 1.0


def test_batches_are_capped(tmp_path: Path) -> None:
    q = make_queue()
    for i in range(10):
        q.changed(old_file(tmp_path / f"{i}.jpg"), tmp_path, closed=True)
    time.sleep(SETTLE_SECONDS + 0.1)  # all ten are due
    sizes = []
    while (work := q.next_work(4, timeout=1)) is not None:
        sizes.append(len(work.paths))
    assert sizes == [4, 4, 2]


def test_delete_waits_for_grace_and_a_return_cancels_it(tmp_path: Path) -> None:
    q = make_queue(delete_grace=0.5)
    f = old_file(tmp_path / "a.jpg")
    q.deleted(f)
    q.changed(f, tmp_path)  # moved back in before the grace period ended
    work = q.next_work(16, timeout=1.5)
    assert work is not None and isinstance(work, TagFiles)
    assert q.next_work(16, timeout=0.8) is None
    g = tmp_path / "gone.jpg"
    q.deleted(g)
    started = time.monotonic()
    work = q.next_work(16, timeout=2)
    assert work is not None and isinstance(work, Delete) and work.paths == (g,)
    assert time.monotonic() - started >= 0.45


def test_pending_entry_follows_a_rename(tmp_path: Path) -> None:
    q = make_queue()
    src, dst = tmp_path / "a.jpg", old_file(tmp_path / "b.jpg")
    q.changed(src, tmp_path)
    q.moved(src, dst)
    first = q.next_work(16, timeout=1)
    assert first is not None and first == Move(src, dst)
    second = q.next_work(16, timeout=2)
    assert second is not None and isinstance(second, TagFiles) and second.paths == (dst,)


def test_full_queue_turns_into_a_reconcile_with_bounded_memory(tmp_path: Path) -> None:
    q = make_queue(limit=100)
    for i in range(10_000):
        q.changed(tmp_path / f"{i}.jpg", tmp_path)
    assert len(q) == 101  # 100 files + one reconcile of the folder
    assert q.overflowed == 9_900
    work = q.next_work(16, timeout=1)
    assert work is not None and work == Reconcile(tmp_path)


def test_stop_wakes_a_waiting_worker(tmp_path: Path) -> None:
    import threading

    q = make_queue()
    threading.Timer(0.2, q.stop).start()
    started = time.monotonic()
    assert q.next_work(16, timeout=30) is None
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lib/IMG_1.jpg", True),
        ("lib/sub/photo.PNG", True),
        ("lib/IMG_1.jpg.part", False),
        ("lib/IMG_1.jpg.crdownload", False),
        ("lib/IMG_1.jpg.tmp", False),
        ("lib/IMG_1.jpg~", False),
        ("lib/.IMG_1.jpg.Xy12Ab", False),  # rsync's temporary name
        ("lib/.hidden.jpg", False),
        ("lib/@eaDir/IMG_1.jpg", False),
        ("lib/.stfolder/x.jpg", False),
        ("lib/.stversions/IMG_1~20240101.jpg", False),
        ("lib/IMG_1.jpg.tags.json", False),
        ("lib/notes.txt", False),
    ],
)
def test_candidate_filter(name: str, expected: bool) -> None:
    assert is_candidate(Path("/srv") / name) is expected


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
nas:/export/photos /mnt/nas nfs4 rw,relatime 0 0
//server/share /mnt/smb cifs rw 0 0
user@host:/pics /home/u/remote fuse.sshfs rw 0 0
/dev/sdb1 /mnt/nas/local ext4 rw 0 0
"""


@pytest.mark.parametrize(
    ("folder", "fstype", "mode"),
    [
        ("/home/u/Pictures", "ext4", "inotify"),
        ("/mnt/nas/2024", "nfs4", "polling"),
        ("/mnt/smb", "cifs", "polling"),
        ("/home/u/remote/x", "fuse.sshfs", "polling"),
        ("/mnt/nas/local/x", "ext4", "inotify"),  # the longest mount point wins
    ],
)
def test_mode_follows_the_filesystem(folder: str, fstype: str, mode: str) -> None:
    assert filesystem_type(Path(folder), MOUNTS) == fstype
    assert choose_mode(Path(folder), WatchConfig(), MOUNTS) == mode


def test_mode_can_be_forced() -> None:
    assert choose_mode(Path("/mnt/nas/x"), WatchConfig(mode="inotify"), MOUNTS) == "inotify"
    assert choose_mode(Path("/home/u/P"), WatchConfig(mode="polling"), MOUNTS) == "polling"
    assert choose_mode(Path("/home/u/P"), WatchConfig(polling_folders=("/home/u/P",)), MOUNTS) == "polling"
