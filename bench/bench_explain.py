"""Benchmark explanations (`tagger explain`, the viewer's "Why?") on a 12-megapixel photo.

Times, as the median and the best of --runs, once the photo is decoded:
  - the explanation itself (preprocess, one model run with the feature map, the class's map),
    from the full 12-megapixel decode and from the draft decode a scan and the viewer use;
  - the JSON map, the viewer's heat layer (512 px) and the overlay PNG (1024 px);
and what the feature map costs a scan that does not ask for it: a batch run asking for the
logits alone against one asking for the feature map too.

    .venv/bin/python bench/bench_explain.py --runs 30
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def timed_ms(action: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median and best of `runs`: on shared cores the best is what the code costs, the median what it got."""
    action()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times), 1000 * min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="images per model run in the scan-cost comparison")
    args = parser.parse_args()

    from sample_photos import sample_sources

    import onnx

    from tagger.engine import explain as cam
    from tagger.engine.classify import Classifier, onnx_network
    from tagger.engine.export import onnx_cache_path
    from tagger.engine.decode import decode_bytes, draft_size, preprocess

    with tempfile.TemporaryDirectory() as tmp:
        classifier = Classifier.load("efficientnet-lite0", Path(tmp), runtime="onnx")
        with Image.open(sample_sources()["chelsea"]) as img:
            big = img.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        full = decode_bytes(data, 10**9).image
        draft = decode_bytes(data, 10**9, draft_size(classifier.spec.preprocess, True)).image
        size = (4000, 3000)
        explanation = cam.explain(classifier, draft, None, size)
        print(f"photo 4000x3000 JPEG; draft decode {draft.width}x{draft.height}; top guess {explanation.label}")
        rows = [
            ("explanation, from the full 12 MP decode", lambda: cam.explain(classifier, full, None, size)),
            ("explanation, from the draft decode (CLI, viewer)", lambda: cam.explain(classifier, draft, None, size)),
            ("  of which the model run", lambda: classifier.with_map(preprocess(draft, classifier.spec.preprocess)[None])),  # type: ignore[misc]
            ("JSON map (--json, ?format=json)", lambda: explanation.as_dict()),
            ("heat layer PNG, 512 px (viewer)", lambda: cam.png_bytes(cam.heat_layer(explanation, 512))),
            ("overlay PNG, 1024 px (--out, ?format=png)", lambda: cam.png_bytes(cam.overlay(explanation, draft))),
        ]
        print(f"{'':<52} {'median':>7}    {'best':>7}")
        for name, action in rows:
            median, best = timed_ms(action, args.runs)
            print(f"{name:<52} {median:7.1f} ms {best:7.1f} ms")

        batch = np.stack([preprocess(draft, classifier.spec.preprocess)] * args.batch)
        old_model = Path(tmp) / "without-feature-map.onnx"
        model = onnx.load(str(onnx_cache_path(classifier.spec, classifier.weights, Path(tmp), "fp32")))
        kept = [o for o in model.graph.output if o.name != "feature_map"]
        del model.graph.output[:]
        model.graph.output.extend(kept)
        onnx.save(model, str(old_model))
        before = onnx_network(old_model)[0]
        runs = {"export without feature_map (before)": before, "export with it, as a scan asks": classifier.network,
                "export with it, the feature map asked for": classifier.with_map}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.runs):  # interleaved, so that the machine's other load falls on all three alike
            for name, run in runs.items():
                started = time.perf_counter()
                run(batch)  # type: ignore[misc]
                times[name].append(time.perf_counter() - started)
        print(f"scan cost: a batch of {args.batch}, median of {args.runs} interleaved runs")
        for name, seconds in times.items():
            ms, best = 1000 * statistics.median(seconds), 1000 * min(seconds)
            print(f"  {name:<50} {ms:7.1f} ms (best {best:6.1f})  {args.batch * 1000 / ms:6.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
