"""`tagger worker ADDRESS`: a Dask worker that classifies image bytes for a coordinator.

The model is loaded once per process, before the worker joins the scheduler, and every task
names the model and weights the coordinator runs: a worker with other weights refuses instead
of tagging a library with a second model. Workers see neither the photos' storage nor the
index: bytes in, tags out. Imported only with the cluster extra installed.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING

import numpy as np
from distributed import Worker, WorkerPlugin, get_worker

from tagger.engine.classify import Classifier
from tagger.engine.decode import DecodedArray, decode_or_error, draft_size, near_ties
from tagger.errors import DecodeError
from tagger.engine.labels import Tag
from tagger.engine.features import image_hash
from tagger.engine.weights import Preprocess
from tagger.cluster.protocol import Classified, Job, JobResult, ModelIdentity, ModelMismatch

if TYPE_CHECKING:
    from tagger.config import ClusterConfig

log = logging.getLogger(__name__)

PLUGIN_NAME = "tagger-model"
EXIT_REFUSED = 2  # systemd's RestartPreventExitStatus: a mismatch is not fixed by a restart
RECONNECT_SECONDS = 5.0


def mismatch_message(worker: ModelIdentity, coordinator: ModelIdentity) -> str:
    return (
        f"this worker runs {worker}, the coordinator {coordinator}: refused, so that one library is not "
        "tagged by two models; install the same weights and model settings on both (`tagger weights`)"
    )


class TaggerModel(WorkerPlugin):  # type: ignore[misc]  # Dask's types are skipped (pyproject.toml)
    """Holds the model loaded once for the worker's life; `refused` says why it left."""

    name = PLUGIN_NAME

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self.identity = ModelIdentity.of(classifier)
        self.refused: str | None = None


def classify_job(job: Job) -> JobResult:
    """The task every worker runs: decode (draft where it can), classify, decode near ties in full."""
    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, TaggerModel):
        raise ModelMismatch(f"{worker.name} is a Dask worker without tagger's model: start it with `tagger worker`")
    if plugin.identity != job.model:
        message = mismatch_message(plugin.identity, job.model)
        log.error("%s", message)
        raise ModelMismatch(f"worker {worker.name}: {message}")
    classifier = plugin.classifier
    spec = classifier.spec.preprocess
    draft = draft_size(spec, job.draft)
    decoded: list[DecodedArray | str] = [_decoded(blob, job.max_pixels, spec, draft) for blob in job.blobs]
    good = [(i, d) for i, d in enumerate(decoded) if isinstance(d, DecodedArray)]
    seen: dict[int, tuple[list[Tag], np.ndarray, int]] = {}
    refined = 0
    if good:
        near_tie = job.refine_lead if job.draft else 0.0  # the coordinator's, also for INT8's close calls
        results, leads, features = classifier.predict(np.stack([d.array for _, d in good]), job.top_k, near_tie)
        near = near_ties([d.reduced for _, d in good], leads, near_tie, job.refine_allowed)
        again = [(k, _decoded(job.blobs[good[k][0]], job.max_pixels, spec, None)) for k in near]
        again_ok = [(k, d) for k, d in again if isinstance(d, DecodedArray)]
        if again_ok:
            redone, _, refeatures = classifier.predict(np.stack([d.array for _, d in again_ok]), job.top_k)
            for (k, _), new, vector in zip(again_ok, redone, refeatures):
                results[k], features[k] = new, vector
            refined = len(again_ok)
        seen = {i: (r, f, image_hash(d.array)) for (i, d), r, f in zip(good, results, features)}
    items = tuple(
        d if isinstance(d, str) else Classified(d.width, d.height, tuple(seen[i][0]), seen[i][1], seen[i][2])
        for i, d in enumerate(decoded)
    )
    return JobResult(str(worker.name), items, refined)


def _decoded(data: bytes, max_pixels: int, spec: Preprocess, draft: int | None) -> DecodedArray | str:
    result = decode_or_error(data, max_pixels, spec, draft)
    return str(result) if isinstance(result, DecodeError) else result


async def check_model(coordinator: ModelIdentity, dask_worker: Worker) -> ModelIdentity | None:
    """Run on each worker by a coordinator that sees it for the first time (`Client.run`).

    A worker with another model records why and leaves the cluster; `run_worker` then exits
    with EXIT_REFUSED and the message. Returns the worker's identity, or None if it is no tagger worker.
    """
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, TaggerModel):
        return None
    if plugin.identity != coordinator:
        plugin.refused = mismatch_message(plugin.identity, coordinator)
        asyncio.get_running_loop().call_later(0.2, lambda: asyncio.ensure_future(dask_worker.close(reason="refused")))
    return plugin.identity


def security(cluster: ClusterConfig, role: str) -> object | None:
    """Dask's TLS settings for a `client` (the coordinator) or a `worker`; None for tcp://."""
    if not cluster.uses_tls:
        return None
    from distributed.security import Security

    settings: object = Security(
        require_encryption=True,
        tls_ca_file=cluster.tls_ca,
        **{f"tls_{role}_cert": cluster.tls_cert, f"tls_{role}_key": cluster.tls_key},
    )
    return settings


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


Signal = Callable[[], None]


def run_worker(
    classifier: Classifier,
    address: str,
    cluster: ClusterConfig,
    nthreads: int,
    host: str | None,
    joined: Signal | None = None,
    alive: tuple[Signal, float] | None = None,
) -> int:
    """Serve tasks until SIGTERM/SIGINT; rejoin when the scheduler comes back. The exit code.

    `joined` is called each time the worker has joined the scheduler (systemd's READY); `alive`,
    (call, seconds), is called that often while the worker's event loop runs (its watchdog).
    """
    return asyncio.run(_serve(classifier, address, cluster, nthreads, host, joined, alive))


async def _serve(
    classifier: Classifier,
    address: str,
    cluster: ClusterConfig,
    nthreads: int,
    host: str | None,
    joined: Signal | None = None,
    alive: tuple[Signal, float] | None = None,
) -> int:
    import dask

    # The worker's HTTP port (on the address it listens on) answers /health only: no metrics, no
    # profiles, no statics for whoever can reach it.
    dask.config.set({"distributed.worker.http.routes": ["distributed.http.health"]})
    plugin = TaggerModel(classifier)
    stopping = asyncio.Event()
    current: list[Worker] = []

    def stop() -> None:
        stopping.set()
        for worker in current:
            asyncio.ensure_future(worker.close(reason="stopped"))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if alive is not None:  # from the event loop itself: a loop that hangs stops the calls
        loop.create_task(_every(alive[0], alive[1], stopping))
    warned = False
    while not stopping.is_set():
        worker = Worker(
            address,
            name=worker_name(),
            nthreads=nthreads,
            plugins=(plugin,),
            security=security(cluster, "worker"),
            host=host,
            dashboard=False,
            death_timeout=None,
        )
        current[:] = [worker]
        try:
            await worker
        except (OSError, asyncio.TimeoutError) as exc:
            if not warned:
                log.warning("scheduler %s unreachable (%s); trying again every %.0f s", address, exc, RECONNECT_SECONDS)
                warned = True
            await worker.close(reason="unreachable")
            await _sleep_unless(stopping, RECONNECT_SECONDS)
            continue
        if warned or not current:
            log.info("joined %s again", address)
        else:
            log.info("worker %s joined %s with %s; waiting for batches", worker.name, address, plugin.identity)
        warned = False
        if joined is not None:
            joined()
        await worker.finished()
        if plugin.refused is not None:
            log.error("%s", plugin.refused)
            return EXIT_REFUSED
        if not stopping.is_set():
            log.warning("scheduler %s gone; joining it again when it is back", address)
            await _sleep_unless(stopping, 1.0)
    return 0


async def _every(call: Signal, seconds: float, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        call()
        await _sleep_unless(stopping, seconds)


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass
