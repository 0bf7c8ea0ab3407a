"""Near-tie refinement: its threshold chosen on one photo set, its agreement reported on another.

A scan decodes a camera JPEG at draft scale (1/4 of a 4000x3000 photo) and decodes it again in
full when the model's best logit leads the second by less than `decode.refine_lead`. This bench
makes two sets of 4000x3000 photos that share no source photo (CALIBRATION_SOURCES,
REPORT_SOURCES), then:

- `--calibrate`: classifies every calibration photo at draft scale, at 1/2 and in full, and
  writes tagger/data/calibration/refine_leads.tsv; the default lead is the one that file
  implies (tagger.engine.decode.calibrated_refine_lead, checked by tests/test_refine.py);
- always, for each set, in one run: `tagger scan` without refinement, with the old rule (a
  probability margin of OLD_REFINE_MARGIN and the refiner's budget as they were before the switch
  to logits), with the stored lead (with the old budget and the shipped one), and with draft
  decoding off (every photo in full: the reference), timed alternately, wall and CPU seconds,
  each scan's top-1 compared with the reference's; what each rule would give without the
  refiner's budget, and refining at 1/2 scale instead of in full, from each photo's answers.

    .venv/bin/python bench/bench_refine.py --calibrate --calibration-count 300 --count 100 --repeat 3

All the photos come from the ~17 real photos scikit-image and matplotlib ship (scripts/sample_photos.py):
the sets are kept apart by source photo and seed, not drawn from photos of another origin.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from sample_photos import more_sources, random_crop, sample_sources

from tagger.engine.decode import (
    REFINE_CALIBRATION,
    REFINE_QUANTILE,
    DraftAnswer,
    calibrated_refine_lead,
    decode_array,
    draft_size,
    expected_misses,
    stored_refine_calibration,
)

# The two sets share no source photo (the stereo pair of motorcycles stays on one side), and each has
# objects, textures, greyscale pictures and a microscope or telescope picture.
CALIBRATION_SOURCES = ("astronaut", "brick", "camera", "coffee", "grass", "hubble_deep_field", "motorcycle_left",
                       "motorcycle_right", "retina")
REPORT_SOURCES = ("chelsea", "clock_motion", "coins", "grace_hopper", "gravel", "ihc", "moon", "rocket")
OLD_REFINE_MARGIN = 0.021  # the probability margin that was the default before near ties were measured in logits
SEEDS = {"calibration": 2801, "report": 2802}
BUDGETS = (0.04, 0.06, 0.08, 0.10, 0.12, 0.15)  # shares of a set refined at most, in the answers' what-if
SIZE = (4000, 3000)
MODEL = "efficientnet-lite0"  # the model with real weights here (ResNet-18's cannot be downloaded)


def make_photos(dest: Path, subjects: tuple[str, ...], count: int, seed: int) -> list[Path]:
    """`count` camera-size JPEGs of the named source photos: each a distinct crop (25-100% of the
    area), some held at an angle (up to 10 degrees) or upright (portrait, one in five), flipped,
    with its own exposure, contrast, colour, sensor grain, JPEG quality and chroma subsampling."""
    rng = random.Random(seed)
    grain_rng = np.random.default_rng(seed)
    sources = {**sample_sources(), **more_sources()}
    photos = {}
    for name in subjects:
        with Image.open(sources[name]) as img:
            photos[name] = img.convert("RGB")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        name = subjects[i % len(subjects)]
        img = photos[name]
        w, h = (SIZE[1], SIZE[0]) if rng.random() < 0.2 else SIZE
        if rng.random() < 0.3:
            angle = rng.uniform(-10, 10)
            a = math.radians(abs(angle))
            fit = 1 / (math.cos(a) + math.sin(a) * max(img.width / img.height, img.height / img.width))
            iw, ih = int(img.width * fit), int(img.height * fit)
            img = img.rotate(angle, Image.Resampling.BICUBIC).crop(
                ((img.width - iw) // 2, (img.height - ih) // 2, (img.width + iw) // 2, (img.height + ih) // 2))
        view = random_crop(img, w / h, rng.uniform(0.25, 1.0), rng)
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.7, 1.3))
        view = ImageEnhance.Contrast(view).enhance(rng.uniform(0.8, 1.2))
        view = ImageEnhance.Color(view).enhance(rng.uniform(0.6, 1.4))
        view = view.resize((w, h), Image.Resampling.BICUBIC)
        grain = rng.uniform(0.0, 3.0) if rng.random() < 0.6 else 0.0
        if grain:
            pixels = np.asarray(view, dtype=np.float32)
            pixels += grain_rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(grain)
            view = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = dest / f"{name}_{i:04d}.jpg"
        view.save(path, "JPEG", quality=rng.randint(80, 95), subsampling=rng.choice((0, 1, 2, 2)))
        written.append(path)
    return written


@dataclass(frozen=True)
class Answers:
    """One photo classified three ways: at the scan's draft scale, at 1/2, in full."""

    name: str
    tops: tuple[int, int, int]  # top-1 class: draft, half, full
    draft_margin: float  # the draft's best minus second-best probability (the old rule's measure)
    leads: tuple[float, float]  # the draft's top-1 logit over its strongest rival: on the draft, on the full decode
    ms: tuple[float, float, float]  # decode to model input, one thread

    @property
    def draft(self) -> DraftAnswer:
        return DraftAnswer(*self.leads)


def answers(classifier: object, paths: list[Path]) -> list[Answers]:
    from tagger.engine.classify import Classifier

    assert isinstance(classifier, Classifier)
    spec = classifier.spec.preprocess
    draft = draft_size(spec, True)
    out = []
    for path in paths:
        data = path.read_bytes()
        ms, logits = [], []
        for size in (draft, 2 * draft, None):  # 2 x draft: the next scale up, 1/2 of a 4000x3000 photo
            started = time.perf_counter()
            array = decode_array(data, 10**9, spec, size).array
            ms.append(1000 * (time.perf_counter() - started))
            raw, _ = classifier.network(array[None])
            logits.append(raw[0].astype(np.float64))
        best, second = np.argsort(-logits[0], kind="stable")[:2]
        probabilities = np.exp(logits[0] - logits[0].max())
        probabilities /= probabilities.sum()
        leads = tuple(float(row[best] - np.delete(row, best).max()) for row in (logits[0], logits[2]))
        out.append(Answers(path.name, (int(best), int(np.argmax(logits[1])), int(np.argmax(logits[2]))),
                           float(probabilities[best] - probabilities[second]), (leads[0], leads[1]),
                           (ms[0], ms[1], ms[2])))
    return out


def write_calibration(rows: list[Answers], count: int) -> None:
    from tagger.cpu import cpu_info
    from tagger.engine.fastjpeg import describe

    lines = [
        "# Near-tie refinement's calibration (bench/bench_refine.py --calibrate): each calibration photo",
        f"# classified by {MODEL} (ONNX fp32) at the scan's draft scale (1/4), at 1/2 and in full.",
        f"# {count} photos of 4000x3000 made from {', '.join(CALIBRATION_SOURCES)} (seed {SEEDS['calibration']});",
        f"# CPU {cpu_info().describe()}; JPEG path: {describe()}.",
        "# draft_margin: the draft's best minus second-best probability. draft_lead: the draft's best logit",
        "# minus the best of the other classes; full_lead: that class's logit minus the best of the others,",
        "# on the full decode (below 0: the full decode's top-1 is another class).",
        "photo\tdraft_top1\thalf_top1\tfull_top1\tdraft_margin\tdraft_lead\tfull_lead",
    ]
    for r in rows:
        lines.append("\t".join([r.name, *(str(t) for t in r.tops), f"{r.draft_margin:.6f}",
                                *(f"{v:.6f}" for v in r.leads)]))
    REFINE_CALIBRATION.write_text("\n".join(lines) + "\n", encoding="utf-8")


class ProbabilityMargins:
    """The old rule in a real scan: the classifier, answering each image's probability margin where
    it now answers the logit lead, so that `decode.refine_lead` acts as the old `refine_margin`."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def predict(self, batch: np.ndarray, top_k: int, near_tie: float = 0.0) -> tuple[object, list[float], np.ndarray]:
        tags, _, features = self.inner.predict(batch, max(top_k, 2), near_tie)  # type: ignore[attr-defined]
        return [t[:top_k] for t in tags], [t[0].score - t[1].score for t in tags], features


def scan(classifier: object, library: Path, work: Path, name: str,
         decode: dict[str, object], grace: int | None = None) -> tuple[float, float, int, dict[str, int]]:
    """One `tagger scan` of `library` into a fresh index: wall and CPU seconds (every thread of this
    process: the machine's other load does not count), photos refined, top-1 per file. `grace`: the
    refiner's budget's near ties beyond its share, if not the shipped one."""
    from tagger.config import load_config
    from tagger.index import Index
    from tagger.library import backend
    from tagger.library.scan import Tagger

    config_path = work / f"{name}.yaml"
    index = work / f"{name}.sqlite"
    settings = ", ".join(f"{k}: {str(v).lower()}" for k, v in decode.items())
    config_path.write_text(
        f"folders: ['{library}']\nindex: '{index}'\nweights_dir: '{work / 'weights'}'\n"
        f"model: {{name: {MODEL}, fallback: null}}\nsidecar: {{enabled: false}}\ndecode: {{{settings}}}\n"
    )
    config = load_config(config_path)
    shipped = backend.REFINE_GRACE
    backend.REFINE_GRACE = shipped if grace is None else grace
    started, cpu = time.monotonic(), time.process_time()
    try:
        with Index.open(config.index) as store:
            tagger = Tagger(config, classifier, store)  # type: ignore[arg-type]
            try:
                summary = tagger.scan(list(config.folders))
            finally:
                tagger.close()
    finally:
        backend.REFINE_GRACE = shipped
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    with sqlite3.connect(index) as conn:
        top1 = {Path(p).name: c for p, c in conn.execute("SELECT path, class_id FROM file_tags WHERE rank = 0")}
    return seconds, cpu, summary.refined, top1


def report(classifier: object, label: str, library: Path, work: Path, rows: list[Answers], lead: float,
           repeat: int) -> None:
    """One set: each scan timed (median of `repeat`), its top-1 against the full decode's."""
    old = ProbabilityMargins(classifier)
    refine = {"draft": True, "refine_lead": lead}
    paths: dict[str, tuple[object, dict[str, object], int | None]] = {
        "draft, no refinement": (classifier, {"draft": True, "refine_lead": 0}, None),
        f"old: probability margin < {OLD_REFINE_MARGIN}": (old, {"draft": True, "refine_lead": OLD_REFINE_MARGIN}, 1),
        f"new: logit lead < {lead}, budget +1 (old)": (classifier, refine, 1),
        f"new: logit lead < {lead}": (classifier, refine, None),
        "full decode everywhere (reference)": (classifier, {"draft": False}, None),
    }
    results: dict[str, tuple[int, dict[str, int]]] = {}
    scan(classifier, library, work, f"{label}-warm", {"draft": True, "refine_lead": 0})  # first-run costs
    times: dict[str, list[float]] = {name: [] for name in paths}
    cpus: dict[str, list[float]] = {name: [] for name in paths}
    for k in range(repeat):  # the paths alternate, so that the machine's other load falls on all of them
        for i, (name, (model, decode, grace)) in enumerate(paths.items()):
            seconds, cpu_seconds, refined, top1 = scan(model, library, work, f"{label}-{i}-{k}", decode, grace)
            times[name].append(seconds)
            cpus[name].append(cpu_seconds)
            results[name] = (refined, top1)
    reference = results["full decode everywhere (reference)"][1]
    wall = {name: median(values) for name, values in times.items()}
    cpu = {name: median(values) for name, values in cpus.items()}
    plain, everything = "draft, no refinement", "full decode everywhere (reference)"
    count = len(reference)
    print(f"\n{label} set: {count} photos of {SIZE[0]}x{SIZE[1]}; a scan each way, times median of {repeat}")
    print(f"{'scan':48s} {'top-1 = full':>12s} {'refined':>8s} {'wall s':>7s} {'cost':>7s} {'vs full':>8s} "
          f"{'CPU s':>6s} {'cost':>7s} {'vs full':>8s}")
    for name in paths:
        refined, top1 = results[name]
        agree = sum(top1.get(p) == c for p, c in reference.items())
        print(f"{name:48s} {agree:>5d}/{count:<3d} {refined / count:>10.1%} "
              f"{wall[name]:>7.2f} {wall[name] / wall[plain] - 1:>+7.1%} {wall[name] / wall[everything]:>7.2f}x "
              f"{cpu[name]:>6.2f} {cpu[name] / cpu[plain] - 1:>+7.1%} {cpu[name] / cpu[everything]:>7.2f}x")
    print("cost: over the scan without refinement; vs full: over decoding every photo in full. Wall: what a")
    print("scan takes (the refiner's decodes overlap the next batches); CPU: the work, whatever else runs")
    draft_ms, half_ms, full_ms = (median(r.ms[i] for r in rows) for i in range(3))
    print(f"decode to model input, median, one thread: draft {draft_ms:.1f} ms, 1/2 {half_ms:.1f} ms, "
          f"full {full_ms:.1f} ms")
    print("from each photo's answers, without the refiner's budget:")
    rules = {f"probability margin < {OLD_REFINE_MARGIN}": lambda r: r.draft_margin < OLD_REFINE_MARGIN,
             f"logit lead < {lead}": lambda r: r.leads[0] < lead}
    for rule, near in rules.items():
        chosen = [r for r in rows if near(r)]
        for scale, index in (("in full", 2), ("at 1/2", 1)):
            agree = sum((r.tops[index] if near(r) else r.tops[0]) == r.tops[2] for r in rows)
            extra = sum(r.ms[index] for r in chosen) / sum(r.ms[0] for r in rows)
            print(f"  {rule} {scale}: top-1 = full {agree}/{len(rows)}, {len(chosen) / len(rows):.1%} refined, "
                  f"their decoding {extra:+.1%} of the drafts' decode time")
    by_lead = sorted(rows, key=lambda r: r.leads[0])
    capped = []
    for share in BUDGETS:  # the refiner's budget across the whole set: only the closest calls refined
        closest = {r.name for r in by_lead[: int(share * len(rows))] if r.leads[0] < lead}
        agree = sum((r.tops[2] if r.name in closest else r.tops[0]) == r.tops[2] for r in rows)
        capped.append(f"{share:.0%}: {agree}/{len(rows)}")
    print(f"  logit lead < {lead} in full, the closest calls only, at most: {', '.join(capped)}")
    flips = [r for r in rows if r.tops[0] != r.tops[2]]
    errors = [r.draft.error for r in rows]
    print(f"draft (1/4) top-1 != full: {len(flips)}; their draft leads "
          f"{sorted(round(r.leads[0], 4) for r in flips)}, margins {sorted(round(r.draft_margin, 4) for r in flips)}; "
          f"1/2 top-1 != full: {sum(r.tops[1] != r.tops[2] for r in rows)}")
    print(f"draft's lead error |draft - full|: median {np.median(errors):.3f}, 90th {np.percentile(errors, 90):.3f}, "
          f"{REFINE_QUANTILE}th {np.percentile(errors, REFINE_QUANTILE):.3f}, largest {max(errors):.3f}; "
          f"expected misses at lead {lead}: {expected_misses([r.draft for r in rows], lead):.2%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="photos per set that are scanned")
    parser.add_argument("--calibrate", action="store_true", help="measure the calibration set, rewrite the data file")
    parser.add_argument("--calibration-count", type=int, default=300, help="calibration photos with --calibrate")
    parser.add_argument("--repeat", type=int, default=1, help="each scan timed this many times; the median shown")
    parser.add_argument("--keep", type=Path, help="make the photos here (reused when there) instead of a temp folder")
    parser.add_argument("--refine-share", type=float, help="the refiner's budget in the scans (default: the shipped "
                        "tagger.library.backend.REFINE_SHARE)")
    args = parser.parse_args()
    from tagger.engine.classify import Classifier
    from tagger.library import backend

    if args.refine_share is not None:
        backend.REFINE_SHARE = args.refine_share
    print(f"refiner's budget: {backend.REFINE_SHARE:.0%} of the photos classified, and {backend.REFINE_GRACE} more")

    with tempfile.TemporaryDirectory(prefix="tagger-refine-") as tmp:
        work = Path(tmp)
        photos = args.keep or work
        (work / "weights").mkdir()
        classifier = Classifier.load(MODEL, work / "weights", runtime="onnx")
        sets = {"calibration": CALIBRATION_SOURCES, "report": REPORT_SOURCES}
        made: dict[str, list[Path]] = {}
        for label, subjects in sets.items():
            count = max(args.count, args.calibration_count) if label == "calibration" and args.calibrate else args.count
            folder = photos / f"{label}-{count}"
            existing = sorted(folder.glob("*.jpg"), key=lambda p: p.stem.rsplit("_", 1)[1])  # as made: sources mixed
            print(f"{label}: {count} photos from {', '.join(subjects)} ...", file=sys.stderr)
            made[label] = existing if len(existing) == count else make_photos(folder, subjects, count, SEEDS[label])
        if args.calibrate:
            print("calibrating ...", file=sys.stderr)
            write_calibration(answers(classifier, made["calibration"]), len(made["calibration"]))
        stored = stored_refine_calibration()
        lead = calibrated_refine_lead(stored)
        print(f"refine lead implied by {REFINE_CALIBRATION.name}: {lead} (expected misses with it, on those "
              f"photos: {expected_misses(stored, lead):.2%})")
        for label in sets:
            subset = made[label][: args.count]
            library = work / f"library-{label}"
            library.mkdir()
            for path in subset:
                os.link(path, library / path.name)
            print(f"{label}: answers and scans ...", file=sys.stderr)
            report(classifier, label, library, work, answers(classifier, subset), lead, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
