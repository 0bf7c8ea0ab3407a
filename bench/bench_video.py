"""Benchmark tagging a video clip against decoding every frame of it, and against a photo, in one run.

Real 1080p30 H.264 clips of real photos (scripts/sample_video.py: the cat, then the espresso; libx264
ultrafast, a keyframe every second as phones record) of each length, three ways:

  tagger      open the file, sample_clip with the default ClipBudget (8 keyframes, the decoder skipping
              every other frame, turned upright, made the model's input) and classify those frames with
              EfficientNet-Lite0 on ONNX Runtime fp32 as a scan does (model.batch_size per run).
  every frame the baseline: PyAV decodes every frame of the stream (one decoder thread, no conversion
              to RGB unless --rgb: decoding alone is the least any every-frame approach costs).
  photo       the reference: one 1920x1080 JPEG of the same picture decoded (draft on, as a scan does)
              and classified. A clip's cost "in photos" is its seconds over this one's.

Each path runs in its own child process pinned to one CPU (so ONNX Runtime's threads share one core,
like the single decoder thread), so that its time and peak memory (VmHWM) are its own. The clips are
encoded once per run, in a temporary folder, or kept and reused with --keep DIR.

    .venv/bin/python bench/bench_video.py --lengths 10,60,300

(add --keep bench/out/video to encode the clips once and reuse them; --quick for a smoke run)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

MODEL = "efficientnet-lite0"
PHOTOS = ("chelsea", "coffee")


def pin_one_cpu() -> None:
    """Run this process, and every thread it starts from now on, on one CPU."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def peak_mb() -> float:
    """This process's peak resident memory so far (VmHWM), in MB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def clip_path(folder: Path, seconds: float, fps: int, size: tuple[int, int], gop: int) -> Path:
    """The clip of this length, encoded unless a previous run left it in `folder`."""
    from sample_video import photo, write_clip

    path = folder / f"clip-{seconds:g}s-{size[0]}x{size[1]}-{fps}fps-gop{gop}.mp4"
    if not path.exists():
        print(f"encoding {path.name} ...", file=sys.stderr, flush=True)
        part = path.with_suffix(".part.mp4")
        write_clip(part, [photo(name) for name in PHOTOS], seconds, fps=fps, size=size, gop=gop)
        part.rename(path)
    return path


def photo_path(folder: Path, size: tuple[int, int]) -> Path:
    """The first picture of the clips as a camera-size JPEG of the clip's frame size."""
    from PIL import Image, ImageOps
    from sample_video import photo

    path = folder / f"photo-{size[0]}x{size[1]}.jpg"
    if not path.exists():
        img = ImageOps.fit(Image.fromarray(photo(PHOTOS[0])), size, Image.Resampling.BICUBIC)
        img.save(path, quality=92)
    return path


def load_classifier() -> Any:
    """EfficientNet-Lite0 on ONNX Runtime fp32, with the default config's batch bound, as a scan loads it."""
    from tagger.config import ModelConfig
    from tagger.engine.classify import Classifier
    from tagger.engine.weights import ModelChoice

    choice = ModelChoice(MODEL, ROOT / "weights", None, "onnx", "fp32", ModelConfig().batch_size)
    return Classifier.from_settings(choice)


def child_tagger(clip: Path, repeat: int) -> dict[str, Any]:
    """sample_clip and one model run per clip, timed `repeat` times (medians), after a warm-up."""
    import numpy as np

    from tagger.engine.video import ClipBudget, clip_tags, sample_clip, sampled_sha256

    classifier = load_classifier()
    spec, top_k = classifier.spec.preprocess, 5
    classifier.predict(np.zeros((2, 3, spec.crop, spec.crop), np.float32), top_k)  # first-run costs
    import av  # noqa: F401 - imported outside the timing
    loaded = peak_mb()
    decode, model, hashing = [], [], []
    tags: list[Any] = []
    frames = 0
    for _ in range(repeat):
        started = time.perf_counter()
        with clip.open("rb") as fh:
            sampled = sample_clip(fh, ClipBudget(), spec)
        middle = time.perf_counter()
        answers = classifier.predict(sampled.arrays, top_k)[0]
        tags = clip_tags(answers, sampled.times, top_k)
        done = time.perf_counter()
        with clip.open("rb") as fh:
            sampled_sha256(fh, clip.stat().st_size)
        hashing.append(time.perf_counter() - done)
        decode.append(middle - started)
        model.append(done - middle)
        frames = len(sampled.times)
    return {"decode": median(decode), "model": median(model), "hash": median(hashing), "frames": frames,
            "top": [t.label for t in tags[:2]], "loaded_mb": loaded, "peak_mb": peak_mb()}


def child_every(clip: Path, rgb: bool) -> dict[str, Any]:
    """Every frame of the clip's video stream decoded on one thread: the baseline."""
    import av

    started = time.perf_counter()
    frames = 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            if rgb:
                frame.to_ndarray(format="rgb24")
            frames += 1
    return {"seconds": time.perf_counter() - started, "frames": frames, "peak_mb": peak_mb()}


def child_photo(jpeg: Path, repeat: int) -> dict[str, Any]:
    """One JPEG read, decoded and classified as a scan does, timed `repeat` times (medians)."""
    from tagger.engine.decode import decode_array, draft_size

    classifier = load_classifier()
    spec = classifier.spec.preprocess
    draft = draft_size(spec, True)
    classifier.predict(decode_array(jpeg.read_bytes(), 10**9, spec, draft).array[None], 5)  # first-call costs
    decode, model = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        array = decode_array(jpeg.read_bytes(), 10**9, spec, draft).array
        middle = time.perf_counter()
        classifier.predict(array[None], 5)
        decode.append(middle - started)
        model.append(time.perf_counter() - middle)
    return {"decode": median(decode), "model": median(model), "peak_mb": peak_mb()}


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": os.environ.get("HOME", "/tmp")},
    )
    if out.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="10,60,300", help="clip lengths in seconds, comma-separated")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 640x360 clips of 2 and 5 s, 1 repeat")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=float, default=1.0, help="seconds between keyframes (phones: 1-2)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the tagger path per clip (median)")
    parser.add_argument("--rgb", action="store_true", help="the baseline also converts every frame to RGB")
    parser.add_argument("--keep", type=Path, help="encode the clips into DIR, reuse them from there, keep them")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pin_one_cpu()
        kind, path = args.child[0], Path(args.child[1])
        result = (child_tagger(path, args.repeat) if kind == "tagger" else child_every(path, args.rgb)
                  if kind == "every" else child_photo(path, max(args.repeat, 20)))
        print(json.dumps(result))
        return 0
    if args.quick:
        args.lengths, args.size, args.repeat = "2,5", "640x360", 1
    lengths = [float(v) for v in args.lengths.split(",")]
    width, height = (int(v) for v in args.size.lower().split("x"))
    size, gop = (width, height), max(1, round(args.gop * args.fps))
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-video-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        clips = [clip_path(folder, seconds, args.fps, size, gop) for seconds in lengths]
        print("photo reference ...", file=sys.stderr, flush=True)
        photo = run_child("--child", "photo", str(photo_path(folder, size)), "--repeat", str(args.repeat))
        for seconds, clip in zip(lengths, clips):
            print(f"{seconds:g} s clip: tagger ...", file=sys.stderr, flush=True)
            ours = run_child("--child", "tagger", str(clip), "--repeat", str(args.repeat))
            print(f"{seconds:g} s clip: every frame ...", file=sys.stderr, flush=True)
            every = run_child("--child", "every", str(clip), *(["--rgb"] if args.rgb else []))
            rows.append((seconds, clip.stat().st_size / 1e6, ours, every))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    photo_s = photo["decode"] + photo["model"]
    baseline = "decode + RGB" if args.rgb else "decode only"
    print(f"\nH.264 {width}x{height} {args.fps} fps, a keyframe every {gop} frames ({gop / args.fps:g} s), libx264 "
          f"ultrafast; {MODEL} ONNX Runtime fp32; every child pinned to one CPU; tagger: median of {args.repeat}")
    print(f"photo reference: one {width}x{height} JPEG decoded (draft) + classified = {1000 * photo_s:.1f} ms "
          f"({1000 * photo['decode']:.1f} + {1000 * photo['model']:.1f}), peak {photo['peak_mb']:.0f} MB")
    print(f"{'length':>7} {'file MB':>8} {'frames':>10} {'tagger s/clip (decode + model)':>31} {'in photos':>10} "
          f"{'every-frame s':>14} {'ratio':>7} {'peak MB tagger':>15} {'peak MB every-frame':>20}")
    for seconds, mb, ours, every in rows:
        total = ours["decode"] + ours["model"]
        split = f"{total:.3f} ({ours['decode']:.3f} + {ours['model']:.3f})"
        frames = f"{ours['frames']}/{every['frames']}"
        print(f"{seconds:6g}s {mb:8.1f} {frames:>10} {split:>31} {total / photo_s:10.1f} "
              f"{every['seconds']:14.2f} {every['seconds'] / total:6.1f}x {ours['peak_mb']:15.0f} "
              f"{every['peak_mb']:20.0f}")
    print(f"frames: decoded by tagger / in the stream; every-frame: {baseline}, one decoder thread; ratio: "
          f"every-frame s / tagger s")
    for seconds, _, ours, _ in rows:
        print(f"{seconds:g} s: tagger child's peak with the model loaded, before any clip, {ours['loaded_mb']:.0f} MB; "
              f"content hash (sampled_sha256, not in the table) {1000 * ours['hash']:.1f} ms; top tags "
              f"{', '.join(ours['top'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
