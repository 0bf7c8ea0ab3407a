"""The viewer under load, against `tagger serve` itself: complete requests queue for a worker and
are never reset; /health is answered while the workers' queue is long; the model's requests are
bounded (503 with Retry-After past those that may wait).

Counts and order, not timings: every one of 200 parallel requests gets its answer, and /health
answers while most of the requests queued before it still wait (bench/bench_web_load.py times it).
"""
from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tagger.config import load_config
from tagger.engine.classify import Classifier

from test_browser import serving
from test_web import make_app, scanned_config

PARALLEL = 200


@pytest.fixture
def library(tmp_path: Path, views: list[Path], sample_jpegs: list[Path]) -> Path:
    folder = tmp_path / "library"
    folder.mkdir()
    for photo in [*views, *sample_jpegs]:
        shutil.copy(photo, folder / photo.name)
    return folder


async def fetch(port: int, target: str) -> str:
    """One whole request sent at once on a new connection: the answer's status, or what went wrong."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return f"not connected: {exc}"
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line)
        body = await reader.read()
        if len(body) != int(headers.get("Content-Length", len(body))):
            return "cut short"
        return head.split(b" ", 2)[1].decode()
    except ConnectionResetError:
        return "reset"
    except (asyncio.IncompleteReadError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()


def light_targets(address: str, count: int) -> list[str]:
    """The grid, the API, thumbnails and image pages, spread over the library."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{address}/api/images?limit=500") as answer:
        items = json.load(answer)["images"]
    kinds = [lambda i: "/", lambda i: "/api/images", lambda i: i["links"]["thumbnail"],
             lambda i: f"/image/{quote(i['path'].lstrip('/'))}"]
    return [kinds[n % len(kinds)](items[n % len(items)]) for n in range(count)]


def test_parallel_complete_requests_are_all_answered_none_reset(
    library: Path, lite0: Classifier, weights_dir: Path
) -> None:
    """Two serving threads and web.connection_limit 20: the 180 complete requests past the limit
    queue for their turn. Those not read yet used to be dropped as "idle" (reset)."""
    with serving(library, lite0, weights_dir, threads=2, connection_limit=20) as address:
        port = int(address.rsplit(":", 1)[1])
        outcomes = asyncio.run(_all_at_once(port, light_targets(address, PARALLEL)))
    assert outcomes == Counter({"200": PARALLEL})


async def _all_at_once(port: int, targets: list[str]) -> Counter[str]:
    return Counter(await asyncio.gather(*(fetch(port, t) for t in targets)))


def test_health_answers_while_the_workers_queue_is_long(library: Path, lite0: Classifier, weights_dir: Path) -> None:
    """Requests queued for the two serving threads first, /health after them: it is answered by
    its own thread while most of them still wait (it used to wait behind all of them)."""
    with serving(library, lite0, weights_dir, threads=2, connection_limit=300) as address:
        port = int(address.rsplit(":", 1)[1])
        queued = light_targets(address, 150)
        done, status = asyncio.run(_health_behind(port, queued))
    print(f"/health answered when {done} of the {len(queued)} requests queued before it were")
    assert status == "200"
    assert done < len(queued) // 2, f"/health answered after {done} of the {len(queued)} requests queued before it"


async def _health_behind(port: int, targets: list[str]) -> tuple[int, str]:
    """(how many of `targets` were answered when /health was, /health's status)."""
    tasks = [asyncio.create_task(fetch(port, t)) for t in targets]
    await asyncio.sleep(0.2)  # every request sent (the event loop ran them up to their first read)
    status = await fetch(port, "/health")
    done = sum(task.done() for task in tasks)
    results = await asyncio.gather(*tasks)
    assert Counter(results) == Counter({"200": len(targets)})
    return done, status


@pytest.fixture
def explain_app(library: Path, lite0: Classifier, weights_dir: Path) -> Iterator[object]:
    config = load_config(scanned_config(library, lite0, weights_dir))
    app = make_app(config, lite0, threads=4)
    try:
        yield app
    finally:
        app.extensions["tagger"].close()


def test_explain_past_the_models_queue_is_503_with_retry_after(explain_app: object, library: Path) -> None:
    """With web.threads 4, two requests may use or wait for the model; a third is told when to come back."""
    app = explain_app
    client = app.test_client()  # type: ignore[attr-defined]
    checker = app.extensions["tagger"].checker  # type: ignore[attr-defined]
    url = f"/api/images/{str(library / 'chelsea.jpg').lstrip('/')}/explain?format=json"
    assert checker.admitted == 2
    with checker.turn(), checker.turn():  # two explanations running or waiting
        busy = client.get(url)
        page = client.get("/")
    assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
    assert "the model is busy" in busy.get_json()["error"]
    assert page.status_code == 200  # the pages are not the model's
    assert client.get(url).status_code == 200  # their turns over, the next one is served
