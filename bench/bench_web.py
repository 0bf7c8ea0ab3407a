"""Benchmark the viewer on an index of 1,000,000 images: server time of each kind of request.

The index is generated (5 tags per image, Zipf-like class frequencies, photos in
year/month-day folders whose times follow the folders) and kept in bench/out/ for the next
run. Requests go through Flask's test client in this process, so the times are the
server's own: routing, SQL, templates, JSON. Baselines in the same run: OFFSET
pagination against the keyset cursor at the same depth, and tag counts recounted against
the cached ones. The manual check is timed on a 12-megapixel JPEG.

    .venv/bin/python bench/bench_web.py [--images 1000000] [--repeat 7]
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from tagger.config import Config, WebConfig  # noqa: E402
from tagger.engine.labels import Tag, imagenet_classes  # noqa: E402
from tagger.index.records import ImageFacts  # noqa: E402
from tagger.index import Index  # noqa: E402
from tagger.web import create_app  # noqa: E402
from tagger.web.query import encode_cursor  # noqa: E402

EPOCH_2010_NS = 1_262_304_000 * 10**9
FIFTEEN_YEARS_NS = 15 * 365 * 86400 * 10**9


def build_index(path: Path, count: int) -> None:
    """`count` images through the store's own writes, 10,000 to a transaction."""
    rng = np.random.default_rng(1)
    classes = imagenet_classes()
    popularity = 1.0 / np.arange(1, 1001) ** 1.1
    draws = rng.permutation(1000)[rng.choice(1000, size=(count, 12), p=popularity / popularity.sum())]
    mtimes = np.sort(rng.integers(EPOCH_2010_NS, EPOCH_2010_NS + FIFTEEN_YEARS_NS, count))
    started = time.monotonic()
    with Index.open(path) as store:
        for batch in range(0, count, 10_000):
            with store.transaction():
                for i in range(batch, min(count, batch + 10_000)):
                    chosen = list(dict.fromkeys(int(c) for c in draws[i]))[:5]
                    scores = np.sort(rng.dirichlet(np.ones(6) * 0.5))[::-1][:5]
                    sha = os.urandom(32).hex()
                    tags = [
                        Tag(c, classes[c].wnid, classes[c].label, classes[c].label_zh, float(s))
                        for c, s in zip(chosen, scores)
                    ]
                    store.save_image(ImageFacts(sha, 3_000_000, 4000, 3000), "efficientnet-lite0", "ab" * 32, tags)
                    day = time.gmtime(int(mtimes[i]) // 10**9)
                    folder = f"/photos/{day.tm_year}/{day.tm_mon:02d}-{day.tm_mday:02d}"
                    store.save_file(f"{folder}/IMG_{i:07d}.jpg", sha, 3_000_000, int(mtimes[i]), None)
            print(f"\r  built {min(count, batch + 10_000):,} images", end="", file=sys.stderr)
    print(f" in {time.monotonic() - started:.0f} s", file=sys.stderr)


def median_ms(run: Callable[[], object], repeat: int) -> float:
    run()  # warm: page cache, statement cache
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def get(client: object, url: str) -> Callable[[], object]:
    def run() -> object:
        response = client.get(url)  # type: ignore[attr-defined]
        assert response.status_code == 200, (url, response.status_code, response.data[:300])
        return response

    return run


def photo_12mp() -> bytes:
    """A real photo upscaled to 4000 x 3000, as a camera would write it."""
    from sample_photos import sample_sources

    with Image.open(sample_sources()["coffee"]) as img:
        big = img.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    big.save(out, "JPEG", quality=90)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--index", type=Path, help="default: bench/out/web-<images>.sqlite (built once, then reused)")
    args = parser.parse_args()
    index = args.index or ROOT / "bench" / "out" / f"web-{args.images}.sqlite"
    if not index.exists():
        index.parent.mkdir(parents=True, exist_ok=True)
        build_index(index, args.images)
    started = time.monotonic()
    Index.open(index).close()  # migrations, as `tagger serve` applies them
    print(f"  index opened (and migrated) in {time.monotonic() - started:.1f} s", file=sys.stderr)

    config = Config(
        folders=(Path("/photos"),),
        index=index,
        weights_dir=ROOT / "weights",
        web=WebConfig(max_upload_mb=64, max_upload_pixels=20_000_000),
    )
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, name="efficientnet-lite0"))
    app = create_app(config)
    client = app.test_client()
    raw = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    raw.execute("PRAGMA mmap_size = 1073741824")  # the same reading conditions as the viewer's
    counts = dict(raw.execute("SELECT class_id, COUNT(*) FROM tags WHERE score >= 0.05 GROUP BY class_id"))
    common = imagenet_classes()[max(counts, key=lambda c: counts[c])]
    rare = imagenet_classes()[min((c for c in counts if counts[c] >= 200), key=lambda c: counts[c])]
    depth = args.images // 2
    deep_key = raw.execute(
        "SELECT mtime_ns, path FROM files WHERE status = 'tagged' ORDER BY mtime_ns DESC, path DESC LIMIT 1 OFFSET ?",
        (depth - 1,),
    ).fetchone()
    cursor = encode_cursor("newest", (deep_key[0], deep_key[1]))
    rows: list[tuple[str, float]] = []

    def measure(name: str, run: Callable[[], object], repeat: int = args.repeat) -> None:
        ms = median_ms(run, repeat)
        rows.append((name, ms))
        print(f"  {name}: {ms:.1f} ms", file=sys.stderr)

    started = time.perf_counter()
    client.get("/api/tags")
    rows.append(("tags with counts, first request (a sum over the counts table)", (time.perf_counter() - started) * 1000))
    measure("tags with counts, cached (`/api/tags`)", get(client, "/api/tags"))

    def recount() -> object:
        return raw.execute(
            """SELECT t.class_id, COUNT(*) FROM files f CROSS JOIN tags t
               WHERE t.sha256 = f.sha256 AND f.status = 'tagged' AND t.score >= 0.05 GROUP BY t.class_id"""
        ).fetchall()

    measure("baseline: tag counts by joining every file with its tags (SQL alone)", recount, 1)
    measure("grid, first page (`/`, HTML, 60 images)", get(client, "/"))
    measure("grid, first page (`/api/images`)", get(client, "/api/images"))
    measure(f"grid, page at depth {depth:,}: keyset cursor", get(client, f"/api/images?after={cursor}"))

    def offset_page() -> object:
        return raw.execute(
            """SELECT f.path, f.sha256, f.size, f.mtime_ns, i.width, i.height, t.class_id, t.label, t.score
               FROM files f JOIN images i ON i.sha256 = f.sha256 JOIN tags t ON t.sha256 = f.sha256 AND t.rank = 0
               WHERE f.status = 'tagged' ORDER BY f.mtime_ns DESC, f.path DESC LIMIT 61 OFFSET ?""",
            (depth,),
        ).fetchall()

    measure(f"baseline: same page by OFFSET {depth:,} (SQL alone)", offset_page, 3)
    measure("grid sorted by score (`/api/images?sort=score`)", get(client, "/api/images?sort=score"))
    measure("grid sorted by name", get(client, "/api/images?sort=name"))
    # the raw guesses, browsed by class: terms (keywords need `tagger retag` on this synthetic index)
    measure(f"class search, common: {common.label} ({counts[common.class_id]:,})", get(client, f"/api/images?q=class:{common.wnid}"))
    measure(f"class search, common, HTML page (`/?q=class:`)", get(client, f"/?q=class:{common.wnid}"))
    measure(f"class search, rare: {rare.label} ({counts[rare.class_id]:,})", get(client, f"/api/images?q=class:{rare.wnid}"))
    measure("class search, a word of 5 classes: dog", get(client, "/api/images?q=class:dog"))
    measure("class search, Chinese 犬 (88 classes)", get(client, "/api/images?q=class:犬"))
    measure(f"two classes: dog + {common.label}", get(client, f"/api/images?q=class:dog+class:{common.wnid}"))
    measure("class search sorted by newest: dog", get(client, "/api/images?q=class:dog&sort=newest"))
    measure("folder filter, one year (/photos/2011), newest", get(client, "/api/images?folder=/photos/2011"))
    measure("folder filter, one day, newest", get(client, "/api/images?folder=/photos/2015/03-01"))
    both = f"/api/images?folder=/photos/2011&q=class:{common.wnid}&sort=newest"
    measure(f"folder 2011 + {common.label}, newest", get(client, both))

    jpeg = photo_12mp()

    def check() -> object:
        response = client.post("/api/classify", data={"file": (io.BytesIO(jpeg), "big.jpg")})
        assert response.status_code == 200, response.data[:300]
        return response

    started = time.perf_counter()
    check()
    rows.append(("manual check, 12 MP JPEG, first (loads the model)", (time.perf_counter() - started) * 1000))
    measure(f"manual check, 12 MP JPEG ({len(jpeg) / 1e6:.1f} MB)", check, 5)
    raw.close()
    app.extensions["tagger"].close()

    print(f"\n{args.images:,} images, {index.stat().st_size / 1e9:.2f} GB index; median of {args.repeat} runs\n")
    print("| request | server time |")
    print("|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:,.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
