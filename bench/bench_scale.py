"""Benchmark a library of many files: first scan, unchanged rescan, the daemon's reconcile, peak memory
and bookkeeping files/s, from 30,000 to 1,000,000 files, against the code before the folder-by-folder
walk (a git worktree of the baseline commit, run the same way) in the same run.

Each library is 300 distinct 640x480 JPEGs (crops of the shipped sample photos, scripts/sample_photos.py)
hard-linked under random names in folders of 100: every file gets its own index row and sidecar, and
300 model runs are the whole of the classifying.

    .venv/bin/python bench/bench_scale.py [--sizes 30000,100000,300000,1000000] [--baseline-sizes 30000,100000]
                                          [--work /tmp/scale] [--baseline COMMIT]

Bookkeeping files/s is (files - 300) / (first scan - the same scan of the 300 distinct photos alone):
the rate of recording copies of known contents. Peak memory is each process's own VmHWM, read by
itself at its exit (the model included): the scan's, and that of a process that loads the model and
runs the daemon's reconcile of the library once. Not the child's ru_maxrss: Linux carries the
high-water mark of the process that starts a child into the child's (at exec), so a scan's figure was
this script's own peak whenever that was larger (202 MB at 1,000,000 files, after the 300,000-file
library's cleanup). Everything under --work is deleted at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from sample_photos import distinct_views  # noqa: E402

DISTINCT = 300
PER_FOLDER = 100
PEAK = "bench-peak-kb:"  # the line a measured command ends its stderr with: its own VmHWM
REPORT_PEAK = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('" + PEAK + "', next(l.split()[1] for l in open('/proc/self/status') "
    "if l.startswith('VmHWM:')), file=sys.stderr))\n"
)

RECONCILE = """
import json, resource, sys, time
from pathlib import Path
from tagger.config import load_config
from tagger.daemon.service import Daemon
from tagger.engine.classify import Classifier
from tagger.index import Index
from tagger.library.scan import Tagger
config = load_config(Path(sys.argv[1]))
daemon = Daemon(config, Path(sys.argv[1]))
classifier = Classifier.from_settings(config.model_choice())
with Index.open(config.index) as store:
    tagger = Tagger(config, classifier, store)
    started = time.monotonic()
    daemon._reconcile(config.folders[0], tagger)
    seconds = time.monotonic() - started
    tagger.close()
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_mb": hwm / 1024}))
"""


def baseline_commit() -> str:
    """The commit before tagger/library/walk.py came: the scan that listed the whole library first."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "tagger/library/walk.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    return (added[-1] + "^") if added else "HEAD"


def build_library(library: Path, sources: list[Path], files: int, seed: int = 28) -> None:
    """`files` hard links to the distinct photos, each at least once, under random names, 100 a folder."""
    rng = random.Random(seed)
    picks = list(range(len(sources))) + [rng.randrange(len(sources)) for _ in range(files - len(sources))]
    rng.shuffle(picks)
    for start in range(0, files, PER_FOLDER):
        folder = library / f"{start // PER_FOLDER:05d}"
        folder.mkdir(parents=True)
        for pick in picks[start : start + PER_FOLDER]:
            os.link(sources[pick], folder / f"{rng.getrandbits(48):012x}.jpg")


def write_config(path: Path, library: Path, index: Path, weights: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "folders": [str(library)],
        "index": str(index),
        "weights_dir": str(weights),
        "model": {"name": "efficientnet-lite0", "fallback": None},
    }))
    return path


def run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds and peak resident MB of one command (made by `python_code`), which must succeed: the
    VmHWM it reports at its exit, its own, not ru_maxrss (which counts this process's, see above)."""
    started = time.monotonic()
    # Not from the repository's folder: `python -c` puts the working folder first on sys.path, which
    # would import this checkout's tagger whatever PYTHONPATH says.
    result = subprocess.run(command, env=env, capture_output=True, cwd="/", check=False)
    seconds = time.monotonic() - started
    err = result.stderr.decode(errors="replace")
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    peaks = [line.split()[1] for line in err.splitlines() if line.startswith(PEAK)]
    if not peaks:
        raise SystemExit(f"{' '.join(command)} did not report its peak memory ({PEAK})")
    return seconds, int(peaks[-1]) / 1024


def python_code(code: str) -> list[str]:
    """`python -c code` that reports its own peak memory at its exit, for `run`."""
    return [sys.executable, "-c", REPORT_PEAK + code]


def environment(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code), "TQDM_DISABLE": "1"}


def tagger() -> list[str]:
    """The `tagger` command of whichever code PYTHONPATH points at."""
    return python_code("from tagger.cli import main; sys.argv[0] = 'tagger'; sys.exit(main())")


def measure(code: Path, name: str, library: Path, work: Path, seed_seconds: float, files: int) -> dict[str, float]:
    env = environment(code)
    config = write_config(work / f"{name}.yaml", library, work / f"{name}.sqlite", work / "weights")
    where = subprocess.run([sys.executable, "-c", "import tagger; print(tagger.__file__)"], env=env, cwd="/",
                           capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(code)), (where, code)  # the code measured is the code named
    first, first_mb = run([*tagger(), "--config", str(config), "scan"], env)
    rescan, rescan_mb = run([*tagger(), "--config", str(config), "scan"], env)
    result = subprocess.run([sys.executable, "-c", RECONCILE, str(config)], env=env, capture_output=True, text=True,
                            cwd="/")
    if result.returncode != 0:
        raise SystemExit(f"reconcile failed:\n{result.stderr[-3000:]}")
    reconcile = json.loads(result.stdout.strip().splitlines()[-1])
    for suffix in ("", "-wal", "-shm", ".vectors"):
        target = work / f"{name}.sqlite{suffix}"
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    remove_sidecars(library)
    return {
        "first": first, "first_mb": first_mb, "rescan": rescan, "rescan_mb": rescan_mb,
        "reconcile": reconcile["seconds"], "reconcile_mb": reconcile["peak_mb"],
        "files_per_s": (files - DISTINCT) / max(first - seed_seconds, 1e-9),
    }


def remove_sidecars(library: Path) -> None:
    """The JSON sidecars of a scan, deleted folder by folder (pathlib's rglob keeps a set of every path
    it yielded: 0.35 KB a file, 350 MB at a million, in this process)."""
    for folder, _, names in os.walk(library):
        for name in names:
            if name.endswith(".tags.json"):
                os.unlink(os.path.join(folder, name))


def seed_time(code: Path, sources: Path, work: Path, name: str) -> float:
    """A first scan of the 300 distinct photos alone: the classifying part of every first scan
    (the second run is timed: the first also makes the weights' export)."""
    env = environment(code)
    seconds = 0.0
    for attempt in range(2):
        index = work / f"seed-{name}-{attempt}.sqlite"
        config = write_config(work / f"seed-{name}.yaml", sources, index, work / "weights")
        seconds, _ = run([*tagger(), "--config", str(config), "scan"], env)
    for sidecar in sources.glob("*.tags.json"):
        sidecar.unlink()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="30000,100000,300000,1000000")
    parser.add_argument("--baseline-sizes", default="30000,100000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scale"))
    parser.add_argument("--baseline", default=None, help="commit to compare with (default: before walk.py)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    base_sizes = [int(s) for s in args.baseline_sizes.split(",") if s]
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    commit = args.baseline or baseline_commit()
    base = work / "base"
    results: dict[str, dict[int, dict[str, float]]] = {"new": {}, "base": {}}
    try:
        if base_sizes:
            subprocess.run(["git", "worktree", "add", "--detach", str(base), commit], cwd=ROOT, check=True,
                           capture_output=True)
            for built in (ROOT / "tagger" / "engine").glob("_resample*.so"):  # the C extension made at install
                shutil.copy(built, base / "tagger" / "engine" / built.name)
        sources = distinct_views(work / "sources", DISTINCT, (640, 480))
        seeds = {"new": seed_time(ROOT, work / "sources", work, "new")}
        if base_sizes:
            seeds["base"] = seed_time(base, work / "sources", work, "base")
        print(f"300 distinct photos classified alone: {seeds['new']:.1f} s"
              + (f" (baseline {seeds['base']:.1f} s)" if base_sizes else ""), flush=True)
        for files in sizes:
            library = work / f"lib-{files}"
            started = time.monotonic()
            build_library(library, sources, files)
            print(f"{files:,} files: library built in {time.monotonic() - started:.0f} s", flush=True)
            for name, code in (("new", ROOT), ("base", base)):
                if name == "base" and files not in base_sizes:
                    continue
                results[name][files] = measure(code, f"{name}-{files}", library, work, seeds[name], files)
                print(f"  {name}: {json.dumps({k: round(v, 1) for k, v in results[name][files].items()})}", flush=True)
            shutil.rmtree(library)
    finally:
        if base.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nbaseline: {commit}; this machine: {os.cpu_count()} cores; ru_maxrss of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB\n")
    print("| files | first scan | unchanged rescan | daemon reconcile | scan peak (rescan peak) | reconcile peak "
          "| bookkeeping files/s |")
    print("|---|---|---|---|---|---|---|")
    for files in sizes:
        new, old = results["new"].get(files), results["base"].get(files)
        if new is None:
            continue

        def cell(key: str, fmt: str = "{}") -> str:
            ours = fmt.format(new[key])
            return ours if old is None else f"{ours} ({fmt.format(old[key])})"

        print(f"| {files:,} | {cell('first', '{:.0f} s')} | {cell('rescan', '{:.1f} s')} | {cell('reconcile', '{:.1f} s')} "
              f"| {cell('first_mb', '{:.0f} MB')} ({cell('rescan_mb', '{:.0f} MB')}) | {cell('reconcile_mb', '{:.0f} MB')} "
              f"| {cell('files_per_s', '{:,.0f}')} |")
    print("\n(in brackets: the baseline commit, same library, same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
