"""Benchmark `tagger scan` against the naive way, in one run, on real-size photos.

The naive baseline: full PIL decode, torchvision transforms, eager PyTorch, one image at
a time. Both run as child processes so that each one's peak memory is its own.

    .venv/bin/python bench/bench_scan.py --count 200 --size 4000x3000 --model efficientnet-lite0
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def build_library(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    from sample_photos import sample_sources, write_samples

    copies = -(-count // len(sample_sources()))
    paths = write_samples(folder, size, copies)
    for extra in paths[count:]:
        extra.unlink()
    return paths[:count]


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB (of that child alone) and stdout of one command."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        out.seek(0)
        text = out.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return seconds, usage.ru_maxrss / 1024, text


def naive(model_name: str, folder: Path) -> None:
    """The baseline, printed as JSON {path: top-1 class id}."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from tagger.classify import Classifier

    classifier = Classifier.load(model_name, ROOT / "weights")
    pre = classifier.spec.preprocess
    interpolation = transforms.InterpolationMode(pre.interpolation)
    transform = transforms.Compose(
        [
            transforms.Resize(pre.resize, interpolation=interpolation),
            transforms.CenterCrop(pre.crop),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    top1 = {}
    with torch.inference_mode():
        for path in sorted(folder.glob("*.jpg")):
            with Image.open(path) as img:
                x = transform(img.convert("RGB"))[None]
            top1[str(path)] = int(classifier.network(x).argmax(1)[0])
    print(json.dumps(top1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--naive-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_dir:
        naive(args.model, args.naive_dir)
        return 0
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="tagger-bench-") as tmp:
        work = Path(tmp)
        library = work / "library"
        print(f"building {args.count} {width}x{height} JPEGs ...", file=sys.stderr)
        build_library(library, args.count, (width, height))
        config = work / "tagger.yaml"
        config.write_text(
            json.dumps(
                {
                    "folders": [str(library)],
                    "index": str(work / "index.sqlite"),
                    "weights_dir": str(ROOT / "weights"),
                    "model": {"name": args.model, "fallback": None},
                }
            )
        )
        tagger = str(Path(sys.executable).parent / "tagger")
        t_seconds, t_mb, _ = run_measured([tagger, "--config", str(config), "-q", "scan"])
        n_seconds, n_mb, n_out = run_measured(
            [sys.executable, __file__, "--model", args.model, "--naive-dir", str(library)]
        )
        reference = json.loads(n_out)
        with sqlite3.connect(work / "index.sqlite") as conn:
            ours = dict(conn.execute("SELECT path, class_id FROM file_tags WHERE rank = 0").fetchall())
        agree = sum(ours.get(p) == c for p, c in reference.items()) / len(reference)
    rows = [
        ("naive (PIL full decode, torchvision, 1 at a time)", n_seconds, n_mb),
        ("tagger scan", t_seconds, t_mb),
    ]
    print(f"{args.count} photos {width}x{height}, model {args.model}, {os.cpu_count()} cores")
    print(f"{'path':52s} {'images/s':>9s} {'ratio':>6s} {'peak MB':>8s}")
    for name, seconds, mb in rows:
        print(f"{name:52s} {args.count / seconds:9.2f} {n_seconds / seconds:5.2f}x {mb:8.0f}")
    print(f"top-1 agreement of tagger scan with the naive reference: {agree:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
