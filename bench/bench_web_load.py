"""Benchmark the viewer under load: 200 parallel complete requests against a real `tagger serve`.

A library of real photos (the shipped ones and distinct views of them) is scanned with
efficientnet-lite0; then `tagger serve` runs as a subprocess on 127.0.0.1 for each source tree
compared (the baseline: an older commit checked out with `git worktree add`; then this tree),
each on its own copy of the index and thumbnail cache. Each wave opens all its connections at
once, every one sending a whole request at once (Connection: close), and counts what comes
back: answers by status, resets and other errors (a connection closed without a whole answer),
latency percentiles. While a wave runs, another thread asks for /health every 100 ms on a
connection of its own and keeps its latencies. Waves: light requests (the grid, /api/images, a
thumbnail, an image page) and explain requests (/api/images/PATH/explain); explain waves are
run twice, the second time the client waiting `Retry-After` and asking again on a 503.

    git worktree add /tmp/webload/base HEAD~3     # the code to compare with
    .venv/bin/python bench/bench_web_load.py --baseline /tmp/webload/base [--requests 200] [--threads 4]
    git worktree remove --force /tmp/webload/base
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from sample_photos import distinct_views, write_samples  # noqa: E402
from test_web import scanned_config  # noqa: E402

from tagger.engine.classify import Classifier  # noqa: E402

REQUEST_TIMEOUT = 300.0  # a request still unanswered after this counts as an error
MAX_RETRIES = 20


@dataclass
class Wave:
    """What one wave of parallel requests got back."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)  # of each answered request, retries included
    retries: int = 0
    wall: float = 0.0
    health: list[float] = field(default_factory=list)
    health_failures: int = 0

    def line(self, name: str) -> str:
        answered = ", ".join(f"{n} x {code}" for code, n in sorted(self.statuses.items()))
        errors = ", ".join(f"{n} {kind}" for kind, n in self.errors.most_common()) or "none"
        lat = sorted(self.seconds)
        pct = (" / ".join(f"{lat[min(len(lat) - 1, int(p * len(lat)))] * 1000:.0f}" for p in (0.5, 0.9, 0.99))
               if lat else "-")
        health = sorted(self.health)
        health_text = (f"{len(health)} asked, median {statistics.median(health) * 1000:.0f} ms, "
                       f"max {health[-1] * 1000:.0f} ms" if health else "none answered")
        if self.health_failures:
            health_text += f", {self.health_failures} failed"
        retried = f", {self.retries} retries after 503" if self.retries else ""
        return (f"  {name}: {answered}; resets/errors: {errors}{retried}; latency p50/p90/p99 {pct} ms; "
                f"wall {self.wall:.1f} s; /health during it: {health_text}")


async def fetch(port: int, target: str) -> tuple[int, dict[str, str]]:
    """One whole request sent at once on a new connection; (status, headers) of a whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await reader.read()
        if "content-length" in headers and len(body) != int(headers["content-length"]):
            raise ConnectionError(f"answer cut short ({len(body)} of {headers['content-length']} bytes)")
        return status, headers
    finally:
        writer.close()


async def one(port: int, target: str, wave: Wave, retry: bool) -> None:
    started = time.monotonic()
    for _ in range(MAX_RETRIES):
        try:
            status, headers = await asyncio.wait_for(fetch(port, target), REQUEST_TIMEOUT)
        except (ConnectionResetError, BrokenPipeError):
            wave.errors["reset"] += 1
            return
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            wave.errors[type(exc).__name__] += 1
            return
        except asyncio.TimeoutError:
            wave.errors["timeout"] += 1
            return
        if status == 503 and retry and "retry-after" in headers:
            wave.retries += 1
            await asyncio.sleep(float(headers["retry-after"]))
            continue
        break
    wave.statuses[status] += 1
    wave.seconds.append(time.monotonic() - started)


async def parallel(port: int, targets: list[str], wave: Wave, retry: bool) -> None:
    await asyncio.gather(*(one(port, t, wave, retry) for t in targets))


def probe_health(port: int, wave: Wave, stop: threading.Event) -> None:
    """/health every 100 ms, each on a new connection, until `stop`: its latency under load."""
    while not stop.is_set():
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", "/health")
            answer = conn.getresponse()
            answer.read()
            if answer.status == 200:
                wave.health.append(time.monotonic() - started)
            else:
                wave.health_failures += 1
        except OSError:
            wave.health_failures += 1
        finally:
            conn.close()
        stop.wait(0.1)


def run_wave(port: int, targets: list[str], retry: bool = False) -> Wave:
    wave = Wave()
    stop = threading.Event()
    prober = threading.Thread(target=probe_health, args=(port, wave, stop))
    started = time.monotonic()
    prober.start()
    try:
        asyncio.run(parallel(port, targets, wave, retry))
    finally:
        wave.wall = time.monotonic() - started
        stop.set()
        prober.join()
    return wave


def serve(tree: Path, config_file: Path) -> tuple[subprocess.Popen[str], int]:
    """`tagger serve` from the source tree `tree`; (process, port)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    server = subprocess.Popen([sys.executable, "-m", "tagger", "--config", str(config_file), "serve"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tree)
    line = server.stdout.readline() if server.stdout else ""
    if "http://127.0.0.1:" not in line:
        server.kill()
        raise SystemExit(f"tagger serve ({tree}) did not start: {line!r}")
    return server, int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])


def targets_of(index: Path, count: int) -> tuple[list[str], list[str]]:
    """(light, explain) request targets, `count` of each, spread over the library."""
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT path, sha256 FROM files WHERE status = 'tagged' ORDER BY path").fetchall()
    finally:
        db.close()
    light_kinds = [
        lambda p, s: "/",
        lambda p, s: "/api/images?limit=60",
        lambda p, s: f"/thumb/{s}",
        lambda p, s: f"/image/{quote(p.lstrip('/'))}",
    ]
    light = [light_kinds[i % len(light_kinds)](*rows[i % len(rows)]) for i in range(count)]
    explain = [f"/api/images/{quote(rows[i % len(rows)][0].lstrip('/'))}/explain?format=png&size=256"
               for i in range(count)]
    return light, explain


def measure(name: str, tree: Path, base: Path, source_library: Path, index: Path, web: dict[str, object],
            count: int) -> None:
    """One server from `tree`, on its own copy of the scanned index, through every wave."""
    folder = base / name
    folder.mkdir()
    for part in index.parent.glob(index.name + "*"):  # the index and whatever files belong with it
        if part.is_file():
            shutil.copy(part, folder / part.name.replace(index.name, "index.sqlite", 1))
    config = yaml.safe_load((source_library.parent / "tagger.yaml").read_text())
    config.update(index=str(folder / "index.sqlite"), web={**config.get("web", {}), **web})
    config_file = folder / "tagger.yaml"
    config_file.write_text(yaml.safe_dump(config))
    light, explain = targets_of(folder / "index.sqlite", count)
    server, port = serve(tree, config_file)
    try:
        print(f"{name} ({tree}):", flush=True)
        print(run_wave(port, light).line(f"{count} light requests"), flush=True)
        print(run_wave(port, light).line(f"{count} light requests again (thumbnails cached)"), flush=True)
        print(run_wave(port, explain).line(f"{count} explain requests"), flush=True)
        print(run_wave(port, explain, retry=True).line(f"{count} explain requests, retrying after 503"),
              flush=True)
    finally:
        server.terminate()
        server.communicate(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a source tree to compare with (e.g. a git worktree of HEAD)")
    parser.add_argument("--requests", type=int, default=200, help="parallel requests per wave")
    parser.add_argument("--threads", type=int, default=4, help="web.threads of both servers")
    parser.add_argument("--views", type=int, default=60, help="distinct photos besides the shipped ones")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="webload-") as folder:
        base = Path(folder)
        library = base / "scanned" / "library"
        library.mkdir(parents=True)
        for photo in [*distinct_views(base / "views", args.views, (1600, 1200)), *write_samples(base / "samples")]:
            shutil.copy(photo, library / photo.name)
        classifier = Classifier.load("efficientnet-lite0", base / "weights", runtime="onnx")
        scanned_config(library, classifier, base / "weights")
        index = library.parent / "index.sqlite"
        web = {"port": 0, "threads": args.threads}
        print(f"{sum(1 for _ in library.glob('*.jpg'))} photos; web.threads {args.threads}; {args.requests} parallel "
              f"requests per wave", flush=True)
        trees = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [("this tree", ROOT)]
        for i, (name, tree) in enumerate(trees):
            measure(f"{i}-{name.replace(' ', '-')}", tree, base, library, index, web, args.requests)


if __name__ == "__main__":
    main()
