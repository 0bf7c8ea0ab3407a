"""Benchmark the tag browser (/tags) on a library of a few hundred real photos, tagged by the real model.

The photos are distinct views of the shipped photos (scripts/sample_photos.py), scanned with
efficientnet-lite0; a learned tag is taught from one of them. Requests go through Flask's test
client in this process (server time: SQL, tree, template). Baseline in the same run: the same
page read again with nothing committed in between (its counts cached), against the page right
after a commit (a keyword added), when the three grouped queries run again.

    .venv/bin/python bench/bench_tag_browser.py [--views 300] [--repeat 7]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from sample_photos import distinct_views, write_samples  # noqa: E402
from test_web import make_app, scanned_config  # noqa: E402

from tagger.config import load_config  # noqa: E402
from tagger.engine.classify import Classifier  # noqa: E402
from tagger.web.context import CSRF_COOKIE  # noqa: E402

CSRF = "b" * 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        library = base / "library"
        library.mkdir()
        for photo in [*distinct_views(base / "views", args.views, (400, 300)), *write_samples(base / "samples")]:
            shutil.copy(photo, library / photo.name)
        classifier = Classifier.load("efficientnet-lite0", base / "weights", runtime="onnx")
        config = load_config(scanned_config(library, classifier, base / "weights"))
        app = make_app(config, classifier)
        try:
            client = app.test_client()
            client.set_cookie(CSRF_COOKIE, CSRF)
            first = sorted(library.glob("*.jpg"))[0]
            client.post("/learn", data={"csrf": CSRF, "name": "mine", "path": [str(first)]})
            viewer = app.extensions["tagger"]
            browser = viewer.tag_counts.browser(viewer.store())
            print(f"{viewer.store().tagged_count()} files, {len(browser.keywords)} keywords, "
                  f"{browser.places} places in the tree, {len(browser.learned)} learned tag")
            after_commit, cached, queries = [], [], []
            for i in range(args.repeat):
                client.post(f"/image/{str(first).lstrip('/')}/keywords", data={"csrf": CSRF, "add": f"bench{i}"})
                started = time.perf_counter()
                page = client.get("/tags")
                after_commit.append(time.perf_counter() - started)
                started = time.perf_counter()
                client.get("/tags")
                cached.append(time.perf_counter() - started)
                client.post(f"/image/{str(first).lstrip('/')}/keywords", data={"csrf": CSRF, "remove": f"bench{i}"})
                started = time.perf_counter()
                viewer.tag_counts.browser(viewer.store())
                queries.append(time.perf_counter() - started)
            assert page.status_code == 200
            print(f"/tags after a commit: {statistics.median(after_commit) * 1000:.0f} ms (median of {args.repeat}); "
                  f"cached: {statistics.median(cached) * 1000:.0f} ms; the three queries and the tree: "
                  f"{statistics.median(queries) * 1000:.1f} ms; page {len(page.data) / 1024:.0f} KB")
        finally:
            app.extensions["tagger"].close()


if __name__ == "__main__":
    main()
