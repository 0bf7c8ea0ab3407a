"""Benchmark `tagger retag` on an index of 1,000,000 images: seconds per kind of rule change.

Works on a fresh copy of bench/bench_web.py's generated index (built there if missing), so
each run starts from the same place. Steps, in order, each on the index the previous left:

  first fill       no keywords yet (an index from before keywords): every content, in bulk
  nothing changed  the stored rules table equals the current one
  one threshold    tabby's threshold raised (one class)
  five classes     the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian) renamed
  a subtree's threshold  the 118 dog breeds' threshold raised to 0.3
  one rename       the 118 dog breeds renamed (a subtree)
  min_score        model.min_score 0.05 -> 0.10 (every class without its own threshold)
  --all            every content rebuilt in bulk, whatever changed

The baseline in the same run is what `tagger retag` did before, on a change like "one
threshold" (tabby's raised again): every content recomputed one by one in Python.
Sidecars are off (the generated paths do not exist), so the times
are the index's; rewriting sidecars costs a file write per changed image on top.

    .venv/bin/python bench/bench_retag.py [--images 1000000] [--no-baseline] [--bulk-share 0.25]
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_web import build_index  # noqa: E402

from tagger.config import Config, ModelConfig, SidecarConfig  # noqa: E402
from tagger.library import keywording  # noqa: E402
from tagger.tags.keywords import keyword_rows  # noqa: E402
from tagger.library.keywording import RetagSummary, Retagger  # noqa: E402
from tagger.tags.rules import DEFAULT_RULES  # noqa: E402
from tagger.index import Index  # noqa: E402

EXTRA_RULES = {
    "one threshold": "  - {class: tabby, threshold: 0.4}\n",
    "five classes renamed": "  - {subtree: domestic cat, rename: house cat, rename_zh: 家猫}\n",
    "a subtree's threshold": "  - {subtree: dog, threshold: 0.3}\n",
    "one rename": "  - {subtree: dog, rename: hound, rename_zh: 猎犬, threshold: 0.4}\n",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-by-one baseline (minutes)")
    parser.add_argument("--bulk-share", type=float, help="override tagger.library.keywording.BULK_SHARE (in place vs bulk)")
    args = parser.parse_args()
    if args.bulk_share is not None:
        keywording.BULK_SHARE = args.bulk_share
    out = ROOT / "bench" / "out"
    source = out / f"web-{args.images}.sqlite"
    if not source.exists():
        out.mkdir(parents=True, exist_ok=True)
        build_index(source, args.images)
    index = out / f"retag-{args.images}.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    shutil.copy(source, index)
    rules = out / "retag-rules.yaml"
    rules.write_text(DEFAULT_RULES.read_text(encoding="utf-8"), encoding="utf-8")
    config = Config(
        folders=(), index=index, weights_dir=ROOT / "weights", rules=rules, sidecar=SidecarConfig(enabled=False)
    )
    results: list[tuple[str, RetagSummary]] = []

    def step(name: str, run: Callable[[Retagger], RetagSummary], current: Config = config) -> None:
        with Index.open(index) as store:
            summary = run(Retagger(current, store))
        results.append((name, summary))
        print(f"  {name}: {summary.seconds:.1f} s, {summary.contents:,} looked at, {summary.changed:,} changed",
              file=sys.stderr)

    step("first fill", lambda k: k.retag())
    step("nothing changed", lambda k: k.retag())
    text = rules.read_text(encoding="utf-8")
    for name, extra in EXTRA_RULES.items():
        text += extra
        rules.write_text(text, encoding="utf-8")
        step(name, lambda k: k.retag())
    raised = dataclasses.replace(config, model=ModelConfig(min_score=0.10))
    step("min_score 0.05 -> 0.10", lambda k: k.retag(), raised)
    step("--all", lambda k: k.retag(everything=True), raised)
    if not args.no_baseline:
        rules.write_text(text + "  - {class: tabby, threshold: 0.45}\n", encoding="utf-8")
        step("baseline: one threshold, every content one by one", one_by_one, raised)

    print(f"\n| step | seconds | contents looked at | changed |\n|---|---|---|---|")
    for name, s in results:
        print(f"| {name} | {s.seconds:.1f} | {s.contents:,} | {s.changed:,} |")
    return 0


def one_by_one(keywording: Retagger) -> RetagSummary:
    """The old way: every content's raw tags through the rules in Python, replaced one by one."""
    started = time.monotonic()
    store, summary, after = keywording.index, RetagSummary(), ""
    store.grow_cache(512 << 20)
    while contents := store.stored_contents(after, 5000):
        with store.transaction():
            for content in contents:
                min_score = keywording.config.model.min_score
                rows = keyword_rows(keywording.rules, content.tags, min_score, content.corrections)
                if set(rows) != set(content.keywords):
                    store.save_keywords(content.sha256, rows)
                    summary.changed += 1
        summary.contents += len(contents)
        after = contents[-1].sha256
    summary.seconds = time.monotonic() - started
    return summary


if __name__ == "__main__":
    sys.exit(main())
