"""Benchmark RAW decoding against the JPEG of the same picture, in one run.

The same 12-megapixel pictures three ways: the camera JPEG (the baseline), a DNG with the camera's
full-size preview (tagger reads the preview, not the sensor) and a DNG without one (tagger demosaics
the sensor at half size). Each path runs in its own child process on one thread, so that its
images/s and peak memory (VmHWM) are its own; the model's input is made exactly as a scan makes it.

    .venv/bin/python bench/bench_raw.py --count 12 --size 4000x3000
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

KINDS = {"jpeg": "camera JPEG (baseline)", "dng-preview": "DNG, preview path", "dng-sensor": "DNG, sensor path"}


def build(folder: Path, count: int, size: tuple[int, int]) -> None:
    """`count` distinct views as JPEG, and the same pixels as DNG with and without a preview."""
    import numpy as np
    from PIL import Image
    from sample_photos import distinct_views
    from sample_raw import make_dng

    for kind in ("dng-preview", "dng-sensor"):
        (folder / kind).mkdir(parents=True)
    for i, jpeg in enumerate(distinct_views(folder / "jpeg", count, size)):
        with Image.open(jpeg) as img:
            rgb = np.asarray(img.convert("RGB"))
        make_dng(rgb, (folder / "dng-preview").joinpath(f"{i:04d}.dng"), preview=True)
        make_dng(rgb, (folder / "dng-sensor").joinpath(f"{i:04d}.dng"), preview=False)


def child(folder: Path) -> None:
    """Read and decode every file of `folder` as a scan does (draft on), on one thread; print images/s."""
    from tagger.engine.decode import decode_array, draft_size
    from tagger.engine.weights import MODELS

    spec = MODELS["efficientnet-lite0"].preprocess
    files = sorted(p for p in folder.iterdir() if p.is_file())
    decode_array(files[0].read_bytes(), 10**9, spec, draft_size(spec, True))  # imports and first-call costs
    started = time.perf_counter()
    for path in files:  # one file's bytes held at a time, as a scan's decoder thread does
        decode_array(path.read_bytes(), 10**9, spec, draft_size(spec, True))
    seconds = time.perf_counter() - started
    peak = next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    mb = sum(p.stat().st_size for p in files) / len(files) / 1e6
    print(f"{len(files) / seconds:.2f} {1000 * seconds / len(files):.1f} {int(peak) // 1024} {mb:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        folder = Path(tmp)
        print(f"building {args.count} pictures at {width}x{height}, as JPEG and as DNG with and without a preview ...")
        build(folder, args.count, (width, height))
        results = {}
        for kind in KINDS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(folder / kind)], capture_output=True, text=True, check=True,
                env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
            ).stdout.split()
            results[kind] = (float(out[0]), float(out[1]), int(out[2]), float(out[3]))
    base = results["jpeg"][0]
    print(f"\n{args.count} pictures at {width}x{height}, one decoder thread, the model's input as a scan makes it")
    print(f"{'path':26} {'images/s':>9} {'ms/image':>9} {'vs JPEG':>8} {'peak MB':>8} {'file MB':>8}")
    for kind, (rate, ms, peak, mb) in results.items():
        print(f"{KINDS[kind]:26} {rate:9.2f} {ms:9.1f} {rate / base:7.2f}x {peak:8d} {mb:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
