"""Quality of the embedding features on real photos (EfficientNet-Lite0, its real weights).

  duplicates  pair precision and recall of `tagger duplicates`' rule, on the set its
              thresholds were chosen on (seed 14) and on a held-out set (seed 15):
              17 shipped photos x 4 shots (70% crops from each corner: the same scene,
              reframed) x (the shot + 4 copies: resized, recompressed, cropped 4%, re-exported)
  similar     how often the top 3 similar images of a shot are shots of the same subject
              (its own copies left out), with the float32, float16 and int8 vectors; and
              how much of float32's top 10 float16 and the stored int8 keep
  learned     a tag taught from 3 and from 10 examples of one subject (distinct views of
              each shipped photo), precision and recall on the rest of the library

    .venv/bin/python bench/bench_quality.py [--views 20] [--repeats 3]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from realsets import COPY_KINDS, make_set  # noqa: E402
from sample_photos import distinct_views  # noqa: E402

from tagger.engine.classify import Classifier  # noqa: E402
from tagger.engine.decode import decode_array, draft_size  # noqa: E402
from tagger.engine.features import image_hash, unit  # noqa: E402
from tagger.vectors.duplicates import is_copy  # noqa: E402
from tagger.vectors.learned import THRESHOLD, Model, train  # noqa: E402
from tagger.index.vectors import quantise  # noqa: E402


def embed(classifier: Classifier, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and image hashes, decoded as a scan decodes them."""
    spec = classifier.spec.preprocess
    arrays = [decode_array(p.read_bytes(), 10**9, spec, draft_size(spec, True)).array for p in paths]
    vectors = np.concatenate([classifier.predict(np.stack(arrays[i : i + 8]), 1)[2] for i in range(0, len(arrays), 8)])
    return vectors, np.array([image_hash(a) for a in arrays], dtype=np.int64)


def duplicates(classifier: Classifier, seed: int, tmp: Path) -> None:
    pictures = make_set(tmp / f"dup{seed}", 4, seed)
    vectors, hashes = embed(classifier, [p.path for p in pictures])
    cos = vectors @ vectors.T
    h = hashes.view(np.uint64)
    tp = fp = fn = 0
    missed: dict[str, int] = {}
    for i in range(len(pictures)):
        for j in range(i + 1, len(pictures)):
            same = (pictures[i].subject, pictures[i].shot) == (pictures[j].subject, pictures[j].shot)
            called = is_copy(int(np.bitwise_count(h[i] ^ h[j])), float(cos[i, j]))
            tp += same and called
            fp += called and not same
            fn += same and not called
            if same and not called:
                for kind in {pictures[i].kind, pictures[j].kind} - {"original"}:
                    missed[kind] = missed.get(kind, 0) + 1
    print(f"duplicates, seed {seed}: {len(pictures)} pictures, {tp + fn} copy pairs, "
          f"{len(pictures) * (len(pictures) - 1) // 2 - tp - fn} other pairs "
          f"(of which {sum(1 for i in range(len(pictures)) for j in range(i + 1, len(pictures)) if pictures[i].subject == pictures[j].subject and pictures[i].shot != pictures[j].shot)} reframed shots of one scene)")
    print(f"  pair precision {tp / max(tp + fp, 1):.3f}, recall {tp / max(tp + fn, 1):.3f} (tp {tp}, fp {fp}, fn {fn})")
    print(f"  missed pairs by copy kind: {', '.join(f'{k}: {missed.get(k, 0)}' for k in COPY_KINDS)}")


def similar(classifier: Classifier, tmp: Path) -> None:
    pictures = [p for p in make_set(tmp / "dup14", 4, 14) if p.kind == "original"]
    vectors, _ = embed(classifier, [p.path for p in pictures])
    subjects = [p.subject for p in pictures]
    variants = {
        "float32": vectors,
        "float16": vectors.astype(np.float16).astype(np.float32),
        "int8 (stored and searched)": quantise(vectors).astype(np.float32),
    }
    reference = None
    for name, v in variants.items():
        rows = unit(v)
        sims = rows @ rows.T
        np.fill_diagonal(sims, -np.inf)
        order = np.argsort(-sims, axis=1)
        same = np.mean([[subjects[j] == subjects[i] for j in order[i, :3]] for i in range(len(pictures))])
        overlap = "" if reference is None else (
            f", top-10 overlap with float32 {np.mean([len(set(order[i, :10]) & set(reference[i])) / 10 for i in range(len(pictures))]):.3f}"
        )
        if reference is None:
            reference = order[:, :10]
        print(f"similar ({name}): top 3 show the same subject {same:.1%} of the time "
              f"({len(pictures)} shots, 3 other shots of each subject){overlap}")


def learned(classifier: Classifier, views: int, repeats: int, tmp: Path) -> None:
    paths = distinct_views(tmp / "views", views * 17, (480, 360))
    vectors, _ = embed(classifier, paths)
    subjects = np.array([p.name.rsplit("_view", 1)[0] for p in paths])
    for count in (3, 10):
        precisions, recalls = [], []
        for subject in sorted(set(subjects)):
            for r in range(repeats):
                rng = random.Random(f"{subject}{r}{count}")
                members = [i for i in range(len(paths)) if subjects[i] == subject]
                examples = rng.sample(members, count)
                rest = [i for i in range(len(paths)) if i not in examples]
                background = rng.sample(rest, min(1000, len(rest)))
                model: Model = train(vectors[examples], np.zeros((0, vectors.shape[1]), np.float32), vectors[background])
                found = model.probabilities(vectors[rest]) >= THRESHOLD
                truth = subjects[rest] == subject
                tp = int((found & truth).sum())
                precisions.append(tp / found.sum() if found.sum() else 1.0)
                recalls.append(tp / truth.sum())
        print(f"learned, taught from {count} examples (no rejected ones; {len(set(subjects))} subjects x {repeats}): "
              f"precision {np.mean(precisions):.3f}, recall {np.mean(recalls):.3f} on the other "
              f"{len(paths) - count} images ({views} views per subject)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=20, help="distinct views per subject for learned tags")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        classifier = Classifier.load("efficientnet-lite0", tmp / "weights", runtime="onnx")
        duplicates(classifier, 14, tmp)
        duplicates(classifier, 15, tmp)
        similar(classifier, tmp)
        learned(classifier, args.views, args.repeats, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
