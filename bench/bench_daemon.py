"""Benchmark `tagger run`: drop-to-sidecar latency, a burst's throughput and memory, idle CPU.

Baselines in the same run: the latency of inotify is compared with polling (1 s interval),
and the burst with a one-shot `tagger scan` of the same files.

    .venv/bin/python bench/bench_daemon.py [--drops 100] [--burst 2000] [--idle 60]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
TAGGER = str(Path(sys.executable).parent / "tagger")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_config(work: Path, name: str, mode: str) -> Path:
    library = work / f"lib-{name}"
    library.mkdir()
    config = work / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "folders": [str(library)],
                "index": str(work / f"{name}.sqlite"),
                "weights_dir": str(work / "weights"),
                "model": {"name": "efficientnet-lite0", "fallback": None, "batch_size": 32},
                "watch": {"mode": mode, "poll_interval": 1.0},
            }
        )
    )
    return config


STARTS: list[float] = []


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    t0 = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen([TAGGER, "--config", str(config), "run"], stderr=out)
    wait(lambda: "ready" in log.read_text(), 120)
    STARTS.append(time.monotonic() - t0)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def wait(predicate, timeout: float, step: float = 0.005) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise SystemExit("timed out")
        time.sleep(step)
    return time.monotonic() - started


def drops(proc_lib: Path, photo: bytes, count: int, staging: Path) -> list[float]:
    """Each drop: a distinct real photo renamed into the folder; time until its sidecar exists."""
    latencies = []
    for i in range(count):
        src = staging / f"drop_{i:04d}.jpg"
        src.write_bytes(photo + i.to_bytes(4, "big"))
        dst = proc_lib / src.name
        t0 = time.monotonic()
        shutil.copyfile(src, dst)
        wait(lambda: Path(str(dst) + ".tags.json").exists(), 60)
        latencies.append(time.monotonic() - t0)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, default=100)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=60)
    args = parser.parse_args()
    from sample_photos import sample_sources

    with Image.open(sample_sources()["coffee"]) as img:
        path = Path(tempfile.mkstemp(suffix=".jpg")[1])
        img.convert("RGB").save(path, quality=90)
        photo = path.read_bytes()
        path.unlink()
    with tempfile.TemporaryDirectory(prefix="tagger-bench-") as tmp:
        work = Path(tmp)
        staging = work / "staging"
        staging.mkdir()
        results = {}
        for name, mode in [("inotify", "inotify"), ("polling", "polling")]:
            config = write_config(work, name, mode)
            log = work / f"{name}.log"
            proc = start(config, log)
            lib = work / f"lib-{name}"
            if name == "inotify":
                time.sleep(2)
                cpu0 = cpu_seconds(proc.pid)
                time.sleep(args.idle)
                results["idle"] = (cpu_seconds(proc.pid) - cpu0) / args.idle
            latencies = drops(lib, photo, args.drops if name == "inotify" else max(10, args.drops // 5), staging)
            results[name] = latencies
            if name == "inotify":
                burst_src = work / "burst"
                burst_src.mkdir()
                rng = np.random.default_rng(0)
                for i in range(args.burst):
                    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(burst_src / f"b{i:05d}.png")
                shutil.copytree(burst_src, work / "burst-scan")
                t0 = time.monotonic()
                for f in sorted(burst_src.iterdir()):
                    f.rename(lib / f.name)
                done = lambda: sum(1 for p in lib.glob("b*.png.tags.json")) == args.burst  # noqa: E731
                wait(done, 1800, step=0.5)  # a slow poll: the benchmark must not eat the CPU it measures
                results["burst_seconds"] = time.monotonic() - t0
                results["peak_mb"] = peak_rss_mb(proc.pid)
            stop(proc)
        scan_config = write_config(work, "scan", "inotify")
        for f in (work / "burst-scan").iterdir():
            f.rename(work / "lib-scan" / f.name)
        t0 = time.monotonic()
        subprocess.run([TAGGER, "--config", str(scan_config), "-q", "scan"], check=True, capture_output=True)
        scan_seconds = time.monotonic() - t0

    def summary(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:.0f} ms, worst {max(values) * 1000:.0f} ms (n={len(values)})"

    print(f"{os.cpu_count()} cores, efficientnet-lite0")
    print(f"drop-to-sidecar, inotify:          {summary(results['inotify'])}")
    print(f"drop-to-sidecar, polling 1 s:      {summary(results['polling'])}  (baseline)")
    print(
        f"burst of {args.burst} small images: {results['burst_seconds']:.1f} s = "
        f"{args.burst / results['burst_seconds']:.1f} images/s, daemon peak RSS {results['peak_mb']:.0f} MB"
    )
    print(
        f"same files by `tagger scan`:      {scan_seconds:.1f} s = {args.burst / scan_seconds:.1f} images/s "
        f"(baseline, includes start-up); daemon/scan = {scan_seconds / results['burst_seconds']:.2f}x"
    )
    print(f"idle CPU over {args.idle:.0f} s: {results['idle'] * 100:.2f}% of one core")
    print(f"start to READY: first start (makes the ONNX export) {STARTS[0]:.2f} s, then {STARTS[1]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
