"""The viewer's duplicates at 150,000 embeddings: the task (groups computed once in the
background, kept, paged) against the old page in the same run (every group computed inside
the request, then every group rendered).

The index is made by tagger's own writes (Index.save_image, save_embedding, Index.save_file)
from synthetic int8 embeddings clustered like real ones and random 64-bit image hashes; 3% of
the contents get a near copy (a few hash bits flipped, a little noise on the embedding, a
quarter of the pixels, a PNG in another folder) and 1% an exact copy (a second file of the same
content). Each side runs in its own process, so that its peak memory is its own:

  before   find_duplicates as it was, inside the request, and every group rendered as the old
           page and API did (timed: the request; memory: the process's peak)
  after    `GET /duplicates` through the Flask test client: the first answer (202 while
           computing), `/health` while the groups are computed, the time until the groups are
           ready, then a page and an API page (timed: each request; memory: the process's peak)

    .venv/bin/python bench/bench_duplicates.py [--contents 150000]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tagger.engine.features import unit  # noqa: E402
from tagger.index import Index  # noqa: E402
from tagger.index.records import ImageFacts  # noqa: E402
from tagger.vectors.embeddings import save_embedding  # noqa: E402

MODEL, DIMS = "efficientnet-lite0", 1280
NEAR, EXACT = 0.03, 0.01


def peak_mb() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024  # type: ignore[union-attr]


def build(index: Path, contents: int, seed: int = 7) -> None:
    """The index, through tagger's own writes, in transactions of 5,000 contents."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((2000, DIMS), dtype=np.float32)
    hashes = rng.integers(-(2**63), 2**63 - 1, contents, dtype=np.int64)
    near = set(rng.choice(contents, int(NEAR * contents), replace=False).tolist())
    exact = set(rng.choice(contents, int(EXACT * contents), replace=False).tolist())
    with Index.open(index) as store:
        for start in range(0, contents, 5000):
            stop = min(start + 5000, contents)
            picked = rng.integers(0, len(centers), stop - start)
            vectors = unit(centers[picked] + 0.8 * rng.standard_normal((stop - start, DIMS), dtype=np.float32))
            with store.transaction():
                for k, i in enumerate(range(start, stop)):
                    sha, path = f"{i:064x}", f"/photos/{2010 + i % 15}/{i % 12 + 1:02d}/IMG_{i:07d}.jpg"
                    mtime = 1_262_304_000 * 10**9 + i * 10**9
                    _content(store, sha, path, 4000, 3000, 3_000_000 + i % 1000, mtime, vectors[k], int(hashes[i]))
                    if i in near:
                        mask = sum(1 << int(b) for b in rng.choice(64, 4, replace=False))
                        flipped = (int(hashes[i]) & (2**64 - 1)) ^ mask
                        flipped = flipped - (1 << 64) if flipped >= 1 << 63 else flipped
                        noisy = unit(vectors[k] + 0.01 * rng.standard_normal(DIMS, dtype=np.float32))  # cosine about 0.95
                        _content(store, f"c{i:063x}", f"/photos/exports/IMG_{i:07d}.png", 2000, 1500, 4_000_000,
                                 mtime + 10**12, noisy, flipped)
                    if i in exact:
                        store.save_file(f"/photos/backup/IMG_{i:07d}.jpg", sha, 3_000_000, mtime + 10**12, None)


def _content(store: Index, sha: str, path: str, width: int, height: int, size: int, mtime: int,
             vector: np.ndarray, image_hash: int) -> None:
    store.save_image(ImageFacts(sha, size, width, height), MODEL, "0" * 64, [])
    save_embedding(store, sha, MODEL, vector, image_hash, [])
    store.save_file(path, sha, size, mtime, None)


def before(index: Path) -> dict[str, float]:
    """The old route: every group computed in the request, every group rendered (the old page's
    template, the old API's JSON)."""
    from flask import Flask, render_template_string

    from tagger.index.vectors import quantise
    from tagger.vectors.duplicates import CROP_BITS, Copy, copies_of, groups, is_copy, near_hashes
    from tagger.vectors.similar import VectorMatrix

    def old_copy_pairs(hashes: np.ndarray, vectors: np.ndarray) -> list[tuple[int, int]]:
        h = np.asarray(hashes, dtype=np.int64).view(np.uint64)
        i, j = near_hashes(hashes, CROP_BITS)
        if not len(i):
            return []
        v = unit(quantise(vectors))
        cosines = np.einsum("ij,ij->i", v[i], v[j])
        bits = np.bitwise_count(h[i] ^ h[j])
        return [(a, b) for a, b, d, c in zip(i.tolist(), j.tolist(), bits.tolist(), cosines.tolist()) if is_copy(int(d), float(c))]

    def old_find_duplicates(store: Index) -> list[list[Copy]]:
        """tagger.vectors.duplicates.find_duplicates as it was before the task: the matrix copied
        out, made float whole, then the cosine of every candidate pair at once."""
        rows = store.vectors
        shas, hashes = rows.hashes(MODEL)
        matrix = VectorMatrix.load(store, MODEL)
        present = [i for i, sha in enumerate(shas) if sha in matrix.row]
        shas = [shas[i] for i in present]
        vectors = np.asarray(matrix.matrix)[[matrix.row[sha] for sha in shas]]
        pairs = old_copy_pairs(hashes[present], vectors)
        content_groups = [[shas[i] for i in members] for members in groups(len(shas), pairs)]
        grouped = {sha for group in content_groups for sha in group}
        content_groups += [[sha] for sha in rows.copies_by_content() if sha not in grouped]
        return copies_of(store, content_groups)

    template = """{% for group in groups %}<section><h2>{{ group | length }} copies</h2><ul>{% for copy in group %}
    <li><a href="/image{{ copy.path }}"><img src="/thumbnail/{{ copy.sha256 }}" alt="{{ copy.path.rsplit('/', 1)[-1] }}">
    {{ copy.path.rsplit('/', 1)[-1] }} {{ '%.1f' % (copy.pixels / 1000000) }} MP</a></li>{% endfor %}</ul></section>{% endfor %}"""
    app = Flask(__name__)
    with Index.open(index, readonly=True) as store, app.app_context():
        started = time.perf_counter()
        found = old_find_duplicates(store)
        page = render_template_string(template, groups=found)
        page_s = time.perf_counter() - started
        started = time.perf_counter()
        found = old_find_duplicates(store)
        body = json.dumps({"groups": [[c.path for c in group] for group in found]})
        api_s = time.perf_counter() - started
    return {"page_s": page_s, "api_s": api_s, "page_mb": len(page) / 1e6, "api_mb": len(body) / 1e6,
            "groups": len(found), "peak_mb": peak_mb()}


def after(index: Path) -> dict[str, float]:
    import dataclasses

    from tagger.config import Config
    from tagger.web import create_app

    config = Config(folders=(Path("/photos"),), index=index, weights_dir=ROOT / "weights")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, name=MODEL))
    client = create_app(config).test_client()
    started = time.perf_counter()
    first = client.get("/duplicates")
    first_s = time.perf_counter() - started
    assert first.status_code == 202, first.status_code
    health: list[float] = []
    while True:
        t = time.perf_counter()
        answer = client.get("/health")
        health.append(time.perf_counter() - t)
        assert answer.status_code in (200, 503)
        if client.get("/api/duplicates?limit=1").status_code == 200:
            break
        time.sleep(0.5)
    ready_s = time.perf_counter() - started
    times, api_times = [], []
    for _ in range(5):
        t = time.perf_counter()
        page = client.get("/duplicates?page=3")
        times.append(time.perf_counter() - t)
        assert page.status_code == 200
        t = time.perf_counter()
        api = client.get("/api/duplicates?page=2&limit=100")
        api_times.append(time.perf_counter() - t)
    totals = api.get_json()["totals"]
    return {"first_s": first_s, "ready_s": ready_s, "health_max_s": max(health), "health_n": len(health),
            "page_s": statistics.median(times), "api_s": statistics.median(api_times), "page_mb": len(page.data) / 1e6,
            "groups": totals["groups"], "files": totals["files"], "freed_gb": totals["freed_bytes"] / 1e9,
            "peak_mb": peak_mb()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contents", type=int, default=150_000)
    parser.add_argument("--side", choices=["before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps((before if args.side == "before" else after)(args.index)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        index = Path(folder) / "index.sqlite"
        started = time.perf_counter()
        build(index, args.contents)
        from tagger.vectors.similar import VectorMatrix

        with Index.open(index, readonly=True) as store:  # the search matrix both sides read, made once
            VectorMatrix.load(store, MODEL)
        print(f"index of {args.contents:,} contents built by tagger's writes in {time.perf_counter() - started:.0f} s")
        results = {}
        for side in ("before", "after"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--index", str(index)],
                                 capture_output=True, text=True, check=True).stdout
            results[side] = json.loads(out.strip().splitlines()[-1])
    old, new = results["before"], results["after"]
    print(f"before: GET /duplicates {old['page_s']:.1f} s ({old['page_mb']:.1f} MB of HTML, {old['groups']:,} groups "
          f"on one page); GET /api/duplicates {old['api_s']:.1f} s ({old['api_mb']:.1f} MB); every request the same; "
          f"process peak {old['peak_mb']} MB")
    print(f"after:  first GET /duplicates answered in {new['first_s']:.1f} s (202, being computed); /health answered "
          f"{new['health_n']} times meanwhile, slowest {new['health_max_s'] * 1000:.0f} ms; groups ready after "
          f"{new['ready_s']:.1f} s, once per index state; then a page of 20 groups {new['page_s'] * 1000:.0f} ms "
          f"({new['page_mb'] * 1000:.0f} KB), an API page of 100 groups {new['api_s'] * 1000:.0f} ms; "
          f"{new['groups']:,} groups, {new['files']:,} files, {new['freed_gb']:.1f} GB to free; process peak "
          f"{new['peak_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
