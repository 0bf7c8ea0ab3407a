"""Benchmark `tagger scan` against the naive way, in one run, on real-size photos.

The naive baseline: full PIL decode, torchvision transforms, eager PyTorch, one image at a
time. It is also the reference for top-1 agreement. Every path runs as its own child
process, so that each one's peak memory (VmHWM) is its own.

    .venv/bin/python bench/bench_scan.py --count 200 --size 4000x3000

ResNet-18 runs with random weights (the real file cannot be downloaded here): a weights
file is made with torch's seeded initialisation and trusted for this run only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

PATHS = {  # name -> config overrides of a `tagger scan` run
    "torch-fp32 full-decode": {"model": {"runtime": "torch", "precision": "fp32"}, "decode": {"draft": False}},
    "onnx-fp32 full-decode": {"model": {"runtime": "onnx", "precision": "fp32"}, "decode": {"draft": False}},
    "onnx-fp32 draft no-refine": {"model": {"runtime": "onnx"}, "decode": {"draft": True, "refine_lead": 0}},
    "onnx-fp32 draft+refine (default)": {"model": {"runtime": "onnx"}, "decode": {"draft": True}},
    # The default as it was before tagger.engine.fastjpeg: the same pixels, made by Pillow alone.
    "default via Pillow alone (before)": {"model": {"runtime": "onnx"}, "decode": {"draft": True},
                                       "env": {"TAGGER_FASTJPEG": "0"}},
    "onnx-int8 draft no-refine": {"model": {"precision": "int8"}, "decode": {"draft": True, "refine_lead": 0}},
    "onnx-int8 draft+refine": {"model": {"precision": "int8"}, "decode": {"draft": True}},
}


def build_library(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """`count` distinct views of every shipped photo at camera size, plus the originals."""
    from sample_photos import distinct_views, write_samples

    return distinct_views(folder, count, size) + write_samples(folder / "originals")


def child_ceiling(config_path: Path, folder: Path, prefix: str | None) -> None:
    """The machine's limits for this model, printed as JSON images/s: draft decoding alone on every
    core, the model alone on decoded batches, and both sharing the cores with nothing else."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    if prefix:
        from tagger.engine.weights import MODELS

        MODELS["resnet18"] = dataclasses.replace(MODELS["resnet18"], sha256_prefix=prefix)
    from tagger.engine.classify import Classifier
    from tagger.config import load_config
    from tagger.engine.decode import decode_array, draft_size

    config = load_config(config_path)
    classifier = Classifier.from_settings(config.model_choice())
    spec = classifier.spec.preprocess
    draft = draft_size(spec, True)
    blobs = [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))]

    def decode(data: bytes) -> np.ndarray:
        return decode_array(data, 10**9, spec, draft).array

    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        started = time.monotonic()
        arrays = list(pool.map(decode, blobs))
        decode_rate = len(blobs) / (time.monotonic() - started)
    started = time.monotonic()
    for i in range(0, len(arrays), 8):
        classifier.predict(np.stack(arrays[i : i + 8]), 5)
    infer_rate = len(arrays) / (time.monotonic() - started)
    with ThreadPoolExecutor(threads) as pool:
        started = time.monotonic()
        batch: list[np.ndarray] = []
        for array in pool.map(decode, blobs):
            batch.append(array)
            if len(batch) == 8:
                classifier.predict(np.stack(batch), 5)
                batch = []
        if batch:
            classifier.predict(np.stack(batch), 5)
        both_rate = len(blobs) / (time.monotonic() - started)
    print(json.dumps({"decode": decode_rate, "inference": infer_rate, "both": both_rate}))


def trust_resnet(weights_dir: Path) -> str:
    """A seeded random ResNet-18 state dict under torchvision's file name; returns its hash prefix."""
    import torch
    from torchvision.models import resnet18

    from tagger.engine.weights import file_sha256

    path = weights_dir / "resnet18-f37072fd.pth"
    if not path.exists():
        torch.manual_seed(18)
        torch.save(resnet18(weights=None).state_dict(), path)
    return file_sha256(path)[:8]


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and stdout of one child.

    The peak is the child's own VmHWM, which it prints as it exits: getrusage's ru_maxrss
    would also count the pages this (large) parent process had when it forked the child.
    """
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr}")
    peaks = [int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("VmHWM:")]
    return seconds, (peaks[-1] / 1024 if peaks else float("nan")), result.stdout


def report_peak_memory() -> None:
    """Print this process's peak resident memory (VmHWM, kB) to stderr for the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(line, file=sys.stderr)


def child_scan(config: Path, prefix: str | None) -> None:
    """`tagger scan` in this process, trusting the bench's random ResNet-18 when asked."""
    if prefix:
        from tagger.engine.weights import MODELS

        MODELS["resnet18"] = dataclasses.replace(MODELS["resnet18"], sha256_prefix=prefix)
    from tagger.cli import cli

    cli(["--config", str(config), "-q", "scan"], prog_name="tagger", standalone_mode=False)


def refined_count(scan_output: str) -> int | None:
    """How many near ties the scan decoded again, from its summary line."""
    match = re.search(r"\((\d+) near ties decoded again", scan_output)
    return int(match.group(1)) if match else 0


def checked_count(scan_output: str) -> int | None:
    """How many of INT8's close calls the scan ran again in fp32, from its summary line."""
    match = re.search(r"\((\d+) close calls of INT8 run again in fp32", scan_output)
    return int(match.group(1)) if match else 0


def child_naive(model: str, weights_dir: Path, folder: Path, prefix: str | None) -> None:
    """The baseline, printed as JSON {path: top-1 class id}."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from tagger.engine.torchnet import load_network
    from tagger.engine.weights import MODELS, find_weights

    spec = MODELS[model]
    if prefix:
        spec = dataclasses.replace(spec, sha256_prefix=prefix)
    network = load_network(spec, find_weights(spec, weights_dir))
    pre = spec.preprocess
    transform = transforms.Compose(
        [
            transforms.Resize(pre.resize, interpolation=transforms.InterpolationMode(pre.interpolation)),
            transforms.CenterCrop(pre.crop),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    top1 = {}
    with torch.inference_mode():
        for path in sorted(folder.rglob("*.jpg")):
            with Image.open(path) as img:
                x = transform(img.convert("RGB"))[None]
            top1[str(path)] = int(network(x).argmax(1)[0])
    print(json.dumps(top1))


def write_config(path: Path, library: Path, index: Path, weights_dir: Path, model: str, overrides: dict) -> Path:
    data: dict = {
        "folders": [str(library)],
        "index": str(index),
        "weights_dir": str(weights_dir),
        "model": {"name": model, "fallback": None},
        "decode": {},
    }
    for key, value in overrides.items():
        if key != "env":
            data[key].update(value)
    path.write_text(json.dumps(data))
    return path


def int8_against_fp32(model: str, answers: dict[str, dict[str, int]]) -> list[str]:
    """INT8's own error (the issue's 99% bar): its top-1 against fp32's on the same draft decodes."""
    fp32, int8 = answers.get("onnx-fp32 draft no-refine"), answers.get("onnx-int8 draft no-refine")
    if not fp32 or not int8:
        return []
    same = sum(int8.get(path) == top for path, top in fp32.items())
    return [f"{model} int8 against fp32, same draft input, no refinement: {same}/{len(fp32)} "
            f"({same / len(fp32):.1%}) top-1 equal"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--models", default="resnet18,efficientnet-lite0")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated names from: " + ", ".join(PATHS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="time the naive path and each scan this many times; the median is reported")
    parser.add_argument("--child-scan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-naive", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-ceiling", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trust", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_scan:
        child_scan(args.child_scan, args.trust)
        report_peak_memory()
        return 0
    if args.child_ceiling:
        child_ceiling(args.child_ceiling[0], args.child_ceiling[1], args.trust)
        return 0
    if args.child_naive:
        model, weights_dir, folder = args.child_naive
        child_naive(model, Path(weights_dir), Path(folder), args.trust)
        report_peak_memory()
        return 0
    from tagger.config import DecodeConfig

    width, height = (int(v) for v in args.size.lower().split("x"))
    me = [sys.executable, __file__]
    rows = []
    ceilings = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tagger-bench-") as tmp:
        work = Path(tmp)
        library, weights_dir = work / "library", work / "weights"
        weights_dir.mkdir()
        print(f"building {args.count} {width}x{height} JPEGs (+ the 6 originals) ...", file=sys.stderr)
        files = build_library(library, args.count, (width, height))
        empty = work / "empty"
        empty.mkdir()
        for model in args.models.split(","):
            trust = trust_resnet(weights_dir) if model == "resnet18" else None
            extra = ["--trust", trust] if trust else []
            print(f"{model}: naive baseline ...", file=sys.stderr)
            naive = [run_measured([*me, "--child-naive", model, str(weights_dir), str(library), *extra])
                     for _ in range(args.repeat)]
            n_sec, n_mb, reference = median([r[0] for r in naive]), max(r[1] for r in naive), json.loads(naive[0][2])
            rows.append((model, "naive (reference)", len(files) / n_sec, 1.0, n_mb, 1.0, None, None, None))
            default = write_config(work / "d.json", library, work / "d.sqlite", weights_dir, model, {})
            run_measured([*me, "--child-scan", str(write_config(work / "w.json", empty, work / "w.sqlite",
                                                                  weights_dir, model, {})), *extra])
            _, _, out = run_measured([*me, "--child-ceiling", str(default), str(library), *extra])
            ceilings.append((model, json.loads(out)))
            answers: dict[str, dict[str, int]] = {}
            for name in args.paths.split(","):
                overrides = PATHS[name]
                config = write_config(work / "c.json", library, work / f"{len(rows)}.sqlite", weights_dir, model, overrides)
                warm = write_config(work / "w.json", empty, work / "warm.sqlite", weights_dir, model, overrides)
                env = overrides.get("env")
                run_measured([*me, "--child-scan", str(warm), *extra], env)  # makes the ONNX export outside the timing
                start_sec, _, _ = run_measured([*me, "--child-scan", str(warm), *extra], env)
                print(f"{model}: {name} ...", file=sys.stderr)
                sec, mb, out = run_measured([*me, "--child-scan", str(config), *extra], env)
                again = [run_measured([*me, "--child-scan", str(write_config(
                    work / "r.json", library, work / f"{len(rows)}-{k}.sqlite", weights_dir, model, overrides)), *extra], env)
                    for k in range(1, args.repeat)]
                sec, mb = median([sec, *(r[0] for r in again)]), max([mb, *(r[1] for r in again)])
                with sqlite3.connect(work / f"{len(rows)}.sqlite") as conn:
                    ours = dict(conn.execute("SELECT path, class_id FROM file_tags WHERE rank = 0").fetchall())
                    if "no-refine" in name:  # the logit lead: the log of the best two probabilities' ratio
                        lead = DecodeConfig().refine_lead
                        leads = {p: math.log(a / b) for p, a, b in conn.execute(
                            "SELECT a.path, a.score, b.score FROM file_tags a JOIN file_tags b "
                            "ON a.path = b.path AND a.rank = 0 AND b.rank = 1")}
                        misses = sorted(round(leads[p], 4) for p, c in reference.items() if ours.get(p) != c)
                        notes.append(f"{model} {name}: top-1 logit leads of the photos that differ from the "
                                     f"reference: {misses}; photos under 0.1/{lead}/0.2: " + "/".join(
                                         str(sum(m < t for m in leads.values())) for t in (0.1, lead, 0.2)))
                answers[name] = ours
                agree = sum(ours.get(p) == c for p, c in reference.items()) / len(reference)
                rows.append((model, name, len(files) / sec, n_sec / sec, mb, agree, start_sec, refined_count(out),
                             checked_count(out) if "int8" in name else None))
            notes += int8_against_fp32(model, answers)
    from tagger.cpu import cpu_info, int8_scheme
    from tagger.engine.fastjpeg import describe

    print(f"\n{len(files)} photos ({args.count} distinct views at {width}x{height} + 6 originals), "
          f"median of {args.repeat} run(s) per path, "
          f"{os.cpu_count()} cores, CPU {cpu_info().describe()}, int8 scheme here: {int8_scheme()}, "
          f"JPEG path: {describe()}")
    print(f"{'model':19s} {'path':33s} {'images/s':>9s} {'ratio':>7s} {'peak MB':>8s} {'top-1 agree':>12s} "
          f"{'start s':>8s} {'refined':>8s} {'checked':>8s}")
    for model, name, rate, ratio, mb, agree, start, refined, checked in rows:
        start_text = f"{start:8.2f}" if start is not None else f"{'':8s}"
        refined_text = f"{refined / len(files):7.1%}" if refined is not None else ""
        checked_text = f"{checked / len(files):7.1%}" if checked is not None else ""
        print(f"{model:19s} {name:33s} {rate:9.2f} {ratio:6.2f}x {mb:8.0f} {agree:11.1%} {start_text} "
              f"{refined_text:>8s} {checked_text:>8s}")
    print("start s: a whole `tagger scan` of an empty folder (process start, imports, model load)")
    print("refined: share of the photos decoded again in full because of a near tie")
    print("checked: share of the photos INT8 found too close to call and ran again in fp32")
    speeds = {(m, n): r for m, n, r, *_ in rows}
    for model in args.models.split(","):
        plain, refined = speeds.get((model, "onnx-fp32 draft no-refine")), speeds.get((model, "onnx-fp32 draft+refine (default)"))
        if plain and refined:
            notes.append(f"{model}: refinement costs {1 - refined / plain:.1%} of the speed (default against no-refine)")
    for note in notes:
        print(note)
    for model, ceiling in ceilings:
        print(f"{model}: ceiling (no I/O, no index) draft decode alone {ceiling['decode']:.1f}/s, model alone "
              f"{ceiling['inference']:.1f}/s, both together {ceiling['both']:.1f}/s")
        for _, name, rate, _, _, _, start, _, _ in (r for r in rows if r[0] == model and r[6] is not None):
            # The ceiling has no process start: the scan's rate without its own start is the fair match.
            steady = len(files) / (len(files) / rate - start) if len(files) / rate > start else float("nan")
            print(f"  {name}: {rate / ceiling['both']:.0%} of it end to end, {steady / ceiling['both']:.0%} "
                  f"without its {start:.2f} s start ({steady:.1f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
