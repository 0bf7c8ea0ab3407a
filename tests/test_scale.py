"""A library of many files: kill -9 at any moment leaves each file recorded whole or redone, a rescan's
memory does not grow with the library, copies in flight are classified once, and a renamed folder's
sidecar paths move with its rows."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tagger.config import load_config
from tagger.engine.classify import Classifier
from tagger.index import Index
from tagger.library.jsonsidecar import sidecar_path
from tagger.library.scan import Tagger
from tagger.library.summary import ScanSummary
from tagger.library.xmp import read_keywords, xmp_path
from tagger.tags.keywords import machine_keywords
from tagger.tags.terms import KeywordRow

from conftest import CountingClassifier
from test_scan import scan

TAGGER = str(Path(sys.executable).parent / "tagger")
ROOT = Path(__file__).resolve().parent.parent


def hard_linked(library: Path, photos: list[Path], files: int, per_folder: int, seed: int = 28) -> list[Path]:
    """`files` hard links to `photos` under random names, `per_folder` a folder (as bench/bench_scale.py)."""
    rng = random.Random(seed)
    made = []
    for n in range(files):
        folder = library / f"{n // per_folder:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{rng.getrandbits(40):010x}.jpg"
        os.link(photos[n % len(photos)], path)
        made.append(path)
    return made


def recorded(index: Path, library: Path, style: str = "append") -> dict[str, Any]:
    """Per image (relative path): what the index and its sidecars say, after checking that they agree.

    A file with a row has its JSON sidecar (parseable, naming its content, where the row says) and
    its XMP (parseable, holding its keywords); a file without a row is left to the next scan. Every
    sidecar in the library, with or without its row, is whole JSON."""
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
        rows = {p: (sha, status, sidecar) for p, sha, status, sidecar in
                conn.execute("SELECT path, sha256, status, sidecar FROM files")}
        keywords = {sha: [k for k in conn.execute("SELECT keyword, keyword_zh, path, path_zh, score, source "
                                                  "FROM keywords WHERE sha256 = ?", (sha,))]
                    for sha in {r[0] for r in rows.values()}}
    for path in library.rglob("*.tags.json"):
        json.loads(path.read_text(encoding="utf-8"))  # never half-written: atomic renames
    state: dict[str, Any] = {}
    for image in sorted(library.rglob("*.jpg")):
        row = rows.get(str(image))
        if row is None:
            continue  # redone by the next scan
        sha, status, sidecar = row
        assert status == "tagged", image
        assert sidecar == str(sidecar_path(image)), image
        document = json.loads(Path(sidecar).read_text(encoding="utf-8"))
        assert document["image"]["sha256"] == sha and document["image"]["file"] == image.name
        machine = machine_keywords([KeywordRow(*k) for k in keywords[sha]])
        xmp = read_keywords(image, style)
        assert xmp_path(image, style).exists(), image
        assert {f"auto|{m.replace('/', '|')}" for m in machine} <= set(xmp["hierarchical"]), image
        document.pop("tagged_at")
        state[str(image.relative_to(library))] = (sha, document, sorted(xmp["hierarchical"]))
    return state


def test_kill_9_at_any_moment_leaves_each_file_recorded_whole_or_redone(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], lite0: Classifier
) -> None:
    """`tagger scan` killed with SIGKILL at random moments while it writes: every file is either fully
    recorded (index row, JSON sidecar and XMP, agreeing) or has no row and is done by the next scan;
    the last scan ends where an uninterrupted one does."""
    library, reference = tmp_path / "library", tmp_path / "reference"
    names = hard_linked(library, sample_jpegs, 300, 100)
    for path in names:
        target = reference / path.relative_to(library)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    config = write_config([library], xmp={"enabled": True, "style": "append"})
    env = {**os.environ, "TQDM_DISABLE": "1"}
    rng = random.Random(1)
    kills = 0
    for threshold in sorted(rng.sample(range(10, 290), 4)):
        proc = subprocess.Popen([TAGGER, "--config", str(config), "scan"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            written = sum(1 for _ in library.rglob("*.tags.json"))
            if written >= threshold:
                time.sleep(rng.uniform(0, 0.05))
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.002)
        proc.wait(60)
        recorded(tmp_path / "index.sqlite", library)  # each file whole, or without its row
    assert kills >= 2  # most runs were killed while writing, not after they finished
    finished = subprocess.run([TAGGER, "--config", str(config), "scan"], env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    once = write_config([reference], index=str(tmp_path / "reference.sqlite"), xmp={"enabled": True, "style": "append"})
    assert subprocess.run([TAGGER, "--config", str(once), "scan"], env=env, capture_output=True).returncode == 0
    after_kills = recorded(tmp_path / "index.sqlite", library)
    uninterrupted = recorded(tmp_path / "reference.sqlite", reference)
    assert len(after_kills) == 300
    assert after_kills == uninterrupted


def rescan_peak(config_path: Path, classifier: Any) -> tuple[int, ScanSummary]:
    """Peak bytes that Python allocated during an unchanged rescan."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        summary = scan(config_path, classifier)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, summary


def test_a_rescan_holds_one_folder_at_a_time_not_the_library(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], lite0: Classifier
) -> None:
    """Bug: a scan listed every file of the library before it started and kept a set of those seen
    (about 0.6 KB a file, 0.8 GB at a million files). Walked folder by folder, a rescan's peak is
    the same at 2,000 and at 20,000 files."""
    peaks = []
    for files in (2_000, 20_000):
        library = tmp_path / f"lib-{files}"
        hard_linked(library, sample_jpegs, files, 100)
        config = write_config([library], index=str(tmp_path / f"{files}.sqlite"))
        first = scan(config, lite0)
        assert first.reused == files - len(sample_jpegs)
        peak, again = rescan_peak(config, lite0)
        assert again.unchanged == files and again.reused == again.classified == 0
        peaks.append(peak)
    # 18,000 more files held as before would be 18,000 x 0.5 KB = 9 MB more; one folder is 100 files.
    assert peaks[1] - peaks[0] < 1024 * 1024, peaks


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_the_scale_bench_measures_each_commands_own_peak_not_its_own(tmp_path: Path) -> None:
    """Bug: bench/bench_scale.py took a scan's peak memory from the child's ru_maxrss, which Linux makes
    at least the high-water mark of the process that started it (carried into the child at exec): the
    "202 MB at a million files" was the bench's own peak after it had listed the 300,000-file library's
    sidecars, not the scan's (121 MB). Each command now reports its own VmHWM."""
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "bench_scale.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ballast = bytearray(200 * 1024 * 1024)
    ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))  # every page resident: this process's peak >= 200 MB
    try:
        _, peak_mb = bench.run(bench.python_code("pass"), dict(os.environ))
    finally:
        del ballast
    assert peak_mb < 100, peak_mb  # a bare Python: about 10 MB


def test_a_walk_drops_the_rows_of_a_deleted_folder_and_keeps_a_hidden_ones(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], lite0: Classifier
) -> None:
    """Deletions are found per folder: a subfolder the walk no longer enters is looked at through its rows."""
    library = tmp_path / "library"
    for path in hard_linked(library, sample_jpegs, 30, 10):  # copies: unlinking a hard link changes the others' ctime
        shutil.copy(path, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    config = write_config([library])
    assert scan(config, lite0).files == 30
    hidden = library / "0001" / ".kept.jpg"
    shutil.copy(sample_jpegs[0], hidden)
    assert scan(config, lite0, [hidden]).files == 1  # named on the command line: indexed, though hidden
    shutil.rmtree(library / "0002")
    (library / "0000" / next(p.name for p in (library / "0000").glob("*.jpg"))).unlink()
    summary = scan(config, lite0)
    assert summary.removed == 11 and summary.unchanged == 19
    with Index.open(load_config(config).index) as store:
        assert store.count_under(str(library)) == 20 and store.file_record(str(hidden)) is not None


def test_copies_in_flight_together_are_classified_once(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], counting: CountingClassifier
) -> None:
    """Bug: copies arriving together were classified once each (307 model runs for 300 images): the
    second copy was read while the first was still out to the model."""
    library = tmp_path / "library"
    library.mkdir()
    for n in range(8):
        for photo in sample_jpegs:
            shutil.copy(photo, library / f"{n}-{photo.name}")
    config = write_config([library], model={"batch_size": 4})
    summary = scan(config, counting)
    assert counting.images == len(sample_jpegs) + summary.refined  # one run per content (and near ties' second)
    assert summary.classified == len(sample_jpegs) and summary.reused == 7 * len(sample_jpegs)
    with Index.open(load_config(config).index) as store:
        assert store.count_under(str(library)) == 8 * len(sample_jpegs)
        for path in library.glob("*.jpg"):
            assert json.loads(sidecar_path(path).read_text())["image"]["file"] == path.name


@pytest.mark.parametrize("mirrored", [False, True])
def test_a_renamed_folder_keeps_its_sidecar_paths_and_a_rescan_repairs_stale_ones(
    tmp_path: Path, sample_jpegs: list[Path], write_config: Callable[..., Path], lite0: Classifier, mirrored: bool
) -> None:
    """Bug: a folder renamed while the daemon ran kept its tags, but the index still pointed its
    sidecars at the old folder (the viewer's sidecar link was a 404), still after a full rescan."""
    library = tmp_path / "library"
    (library / "trip").mkdir(parents=True)
    for photo in sample_jpegs[:3]:
        shutil.copy(photo, library / "trip" / photo.name)
    mirror = tmp_path / "sidecars" if mirrored else None
    config_path = write_config([library], **({"sidecar": {"folder": str(mirror)}} if mirror else {}))
    config = load_config(config_path)
    with Index.open(config.index) as store:
        tagger = Tagger(config, lite0, store)
        try:
            tagger.scan([library])
            (library / "trip").rename(library / "2024")
            assert tagger.move_tree(library / "trip", library / "2024") == 3
            for photo in sample_jpegs[:3]:
                image = library / "2024" / photo.name
                record = store.file_record(str(image))
                assert record is not None and record.sidecar == str(sidecar_path(image, mirror))
                assert Path(record.sidecar).exists()
            image = library / "2024" / sample_jpegs[0].name
            stale = str(sidecar_path(library / "trip" / image.name, mirror))
            with store.transaction():
                store.set_sidecar(str(image), stale)  # as an older tagger left it
            summary = tagger.scan([library])
            assert summary.unchanged == 3 and summary.reused == summary.classified == 0
            assert store.file_record(str(image)).sidecar == str(sidecar_path(image, mirror))  # type: ignore[union-attr]
        finally:
            tagger.close()
