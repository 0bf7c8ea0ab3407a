"""The index and sidecars after a scan, a re-scan, a copy, a content change and a delete."""
from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tagger.config import load_config
from tagger.library.summary import ScanSummary
from tagger.library.scan import Tagger
from tagger.library.jsonsidecar import read_sidecar, sidecar_path
from tagger.index import MIGRATIONS, Index

from conftest import CountingClassifier


@pytest.fixture
def library(tmp_path: Path, sample_jpegs: list[Path]) -> Path:
    lib = tmp_path / "library"
    (lib / "2024" / "trip").mkdir(parents=True)
    for src in sample_jpegs:
        shutil.copy(src, lib / "2024" / "trip" / src.name if "coffee" in src.name else lib / src.name)
    (lib / "notes.txt").write_text("not an image, not a candidate")
    (lib / ".hidden.jpg").write_bytes(b"ignored")
    (lib / "broken.jpg").write_text("this is text with a .jpg name")
    (lib / "empty.png").write_bytes(b"")
    return lib


def scan(config_path: Path, classifier: Any, roots: list[Path] | None = None) -> ScanSummary:
    config = load_config(config_path)
    with Index.open(config.index) as store:
        tagger = Tagger(config, classifier, store)
        try:
            return tagger.scan(roots or list(config.folders))
        finally:
            tagger.close()


def test_scan_skips_the_folders_the_watcher_skips(
    tmp_path: Path, write_config: Callable[..., Path], counting: CountingClassifier, sample_jpegs: list[Path]
) -> None:
    """Bug: `tagger scan` tagged NAS recycle bins, snapshots and lost+found, which the watcher ignores."""
    from tagger.fileio import SKIPPED_FOLDERS
    from tagger.daemon.watch import is_candidate

    library = tmp_path / "library"
    skipped = ["#recycle", "#snapshot", "lost+found", "@eaDir", ".stfolder", ".stversions", "__pycache__", ".hidden"]
    for folder in ["kept", *skipped]:
        (library / folder).mkdir(parents=True)
        shutil.copy(sample_jpegs[0], library / folder / "photo.jpg")
    assert {f for f in skipped if not f.startswith(".")} | {".stfolder", ".stversions"} <= SKIPPED_FOLDERS
    config = write_config()
    summary = scan(config, counting)
    assert summary.files == 1
    assert rows(load_config(config).index, "SELECT path FROM files") == [(str(library / "kept" / "photo.jpg"),)]
    for folder in skipped:
        assert not is_candidate(library / folder / "photo.jpg")


def rows(index: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Plain SQL, as a user would query the index."""
    with sqlite3.connect(index) as conn:
        return conn.execute(sql, params).fetchall()


def test_scan_writes_sidecars_and_index(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier, tmp_path: Path
) -> None:
    summary = scan(write_config(), counting)
    assert (summary.files, summary.classified, summary.failed) == (8, 6, 2)
    assert counting.images == 6
    coffee = library / "2024" / "trip" / "coffee.jpg"
    doc = read_sidecar(coffee)
    assert doc["tags"][0]["label"] == "espresso"
    assert doc["model"]["name"] == "efficientnet-lite0"
    assert not sidecar_path(library / "broken.jpg").exists()
    assert not sidecar_path(library / ".hidden.jpg").exists()
    index = tmp_path / "index.sqlite"
    assert rows(index, "PRAGMA journal_mode") == [("wal",)]
    assert rows(index, "SELECT path FROM file_tags WHERE label = 'espresso' AND rank = 0") == [(str(coffee),)]
    failures = dict(rows(index, "SELECT path, error FROM files WHERE status = 'failed'"))
    assert "not an image" in failures[str(library / "broken.jpg")]
    assert "empty file" in failures[str(library / "empty.png")]
    assert rows(index, "SELECT MAX(version) FROM schema_migrations") == [(len(MIGRATIONS),)]


def test_rescan_costs_no_model_run(library: Path, write_config: Callable[..., Path], counting: CountingClassifier) -> None:
    config = write_config()
    scan(config, counting)
    counting.images = 0
    summary = scan(config, counting)
    assert counting.images == 0
    assert (summary.unchanged, summary.classified, summary.reused, summary.failed) == (8, 0, 0, 0)


def test_copy_is_tagged_from_the_index(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier, tmp_path: Path
) -> None:
    config = write_config()
    scan(config, counting)
    counting.images = 0
    shutil.copy(library / "chelsea.jpg", library / "chelsea copy.jpg")
    summary = scan(config, counting)
    assert counting.images == 0 and summary.reused == 1
    assert read_sidecar(library / "chelsea copy.jpg")["tags"] == read_sidecar(library / "chelsea.jpg")["tags"]
    shas = rows(tmp_path / "index.sqlite", "SELECT DISTINCT sha256 FROM files WHERE path LIKE '%chelsea%'")
    assert len(shas) == 1


def test_changed_content_is_tagged_again(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier, tmp_path: Path
) -> None:
    config = write_config()
    scan(config, counting)
    counting.images = 0
    target = library / "chelsea.jpg"
    target.write_bytes((library / "2024" / "trip" / "coffee.jpg").read_bytes() + b"\0")  # new content
    summary = scan(config, counting)
    assert counting.images == 1 and summary.classified == 1
    assert read_sidecar(target)["tags"][0]["label"] == "espresso"
    top = rows(tmp_path / "index.sqlite", "SELECT label FROM file_tags WHERE path = ? AND rank = 0", str(target))
    assert top == [("espresso",)]


def test_deleted_files_leave_the_index(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier, tmp_path: Path
) -> None:
    config = write_config()
    scan(config, counting)
    (library / "rocket.jpg").unlink()
    (library / "broken.jpg").unlink()
    summary = scan(config, counting)
    assert summary.removed == 2
    paths = {p for (p,) in rows(tmp_path / "index.sqlite", "SELECT path FROM files")}
    assert str(library / "rocket.jpg") not in paths and str(library / "chelsea.jpg") in paths


def test_one_bad_file_in_a_batch_does_not_stop_the_rest(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    summary = scan(write_config(model={"batch_size": 64}), counting)
    assert summary.classified == 6 and summary.failed == 2
    assert counting.images == 6


def test_unwritable_sidecar_still_indexes_and_says_why(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier, tmp_path: Path
) -> None:
    sidecar_path(library / "rocket.jpg").mkdir()  # the OS refuses to replace a folder with a file
    summary = scan(write_config(), counting)
    assert summary.sidecar_errors == 1 and summary.classified == 6
    row = rows(tmp_path / "index.sqlite", "SELECT status, error FROM files WHERE path = ?", str(library / "rocket.jpg"))
    assert row[0][0] == "tagged" and "sidecar not written" in row[0][1]


def test_lost_sidecar_is_rewritten_without_a_model_run(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    config = write_config()
    scan(config, counting)
    counting.images = 0
    sidecar_path(library / "chelsea.jpg").unlink()
    summary = scan(config, counting)
    assert counting.images == 0 and summary.reused == 1
    assert sidecar_path(library / "chelsea.jpg").exists()


def test_sidecars_can_be_switched_off(
    library: Path, write_config: Callable[..., Path], counting: CountingClassifier, tmp_path: Path
) -> None:
    scan(write_config(sidecar={"enabled": False}), counting)
    assert not list(library.rglob("*.tags.json"))
    assert rows(tmp_path / "index.sqlite", "SELECT COUNT(*) FROM files WHERE status = 'tagged'") == [(6,)]


def test_helper_threads_run_below_the_model(
    library: Path, write_config: Callable[..., Path], lite0: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers and decoders yield the CPU to the model's threads (tagger.cpu.yield_to_model)."""
    import os
    import threading

    import tagger.library.backend as backend

    seen: dict[str, int] = {}
    real = backend.decode_or_error

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen[threading.current_thread().name] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "decode_or_error", spy)
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    summary = scan(write_config([library]), lite0)
    assert summary.classified == 6  # the shipped photos; broken.jpg and empty.png fail
    assert seen and all(name.startswith("tagger-decode") for name in seen)
    assert all(nice == min(19, main + 10) for nice in seen.values()), (main, seen)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # the caller's own is untouched


def test_a_photo_replaced_by_another_of_the_same_size_and_mtime_is_tagged_again(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], lite0: Classifier
) -> None:
    """rsync --times or a restore: same size, same mtime, another picture. Its ctime and inode differ,
    so the hash decides, and the old tags no longer stay in the index, the JSON and the XMP."""
    import json
    import os
    import shutil

    from tagger.config import load_config
    from tagger.index import Index
    from tagger.library.jsonsidecar import sidecar_path
    from tagger.library.scan import Tagger

    photos = {p.stem: p for p in sample_jpegs}
    library = tmp_path / "library"
    library.mkdir()
    target = library / "photo.jpg"
    data = photos["coffee"].read_bytes()
    other = photos["chelsea"].read_bytes()
    other = (other + b"\0" * len(data))[: len(data)] if len(other) < len(data) else other[: len(data)]
    target.write_bytes(data)
    config = load_config(write_config([library]))
    with Index.open(config.index) as store:
        tagger = Tagger(config, lite0, store)
        try:
            tagger.scan(list(config.folders))
            first = json.loads(sidecar_path(target).read_text())["image"]["sha256"]
            stat = target.stat()
            staged = library / ".staged"
            staged.write_bytes(other)  # the same size, another content
            os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            os.replace(staged, target)  # a new inode, the same size and mtime
            assert (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
            again = tagger.scan(list(config.folders))
            assert again.unchanged == 0
            second = json.loads(sidecar_path(target).read_text())["image"]["sha256"]
            assert second != first and store.file_record(str(target)).sha256 == second  # type: ignore[union-attr]
            assert tagger.scan(list(config.folders)).unchanged == 1  # and then it is unchanged again
        finally:
            tagger.close()
    shutil.rmtree(library)
