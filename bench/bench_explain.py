"""Benchmark explanations (`tagger explain`, the viewer's "Why?") on a 12-megapixel photo.

Times, as the median of --runs, once the photo is decoded:
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


def median_ms(action: Callable[[], object], runs: int) -> float:
    action()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="images per model run in the scan-cost comparison")
    args = parser.parse_args()

    from sample_photos import sample_sources

    from tagger import explain as cam
    from tagger.classify import Classifier
    from tagger.decode import decode_bytes, draft_size, preprocess

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
        print(f"photo 4000x3000 JPEG; draft decode {draft.width}x{draft.height}; top guess {explanation.cls.label}")
        rows = [
            ("explanation, from the full 12 MP decode", lambda: cam.explain(classifier, full, None, size)),
            ("explanation, from the draft decode (CLI, viewer)", lambda: cam.explain(classifier, draft, None, size)),
            ("  of which the model run", lambda: classifier.with_map(preprocess(draft, classifier.spec.preprocess)[None])),  # type: ignore[misc]
            ("JSON map (--json, ?format=json)", lambda: explanation.as_dict()),
            ("heat layer PNG, 512 px (viewer)", lambda: cam.png_bytes(cam.heat_layer(explanation, 512))),
            ("overlay PNG, 1024 px (--out, ?format=png)", lambda: cam.png_bytes(cam.overlay(explanation, draft))),
        ]
        for name, action in rows:
            print(f"{name:<52} {median_ms(action, args.runs):7.1f} ms")

        batch = np.stack([preprocess(draft, classifier.spec.preprocess)] * args.batch)
        assert classifier.with_map is not None
        logits_only = median_ms(lambda: classifier.network(batch), args.runs)
        with_map = median_ms(lambda: classifier.with_map(batch), args.runs)  # type: ignore[misc]
        print(f"scan cost, batch of {args.batch}: logits only {logits_only:.1f} ms, with the feature map {with_map:.1f} ms "
              f"({args.batch * 1000 / logits_only:.1f} vs {args.batch * 1000 / with_map:.1f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
