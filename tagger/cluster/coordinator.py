"""The coordinator's link to a Dask scheduler: batches of image bytes out, tags back.

A bounded window: at most `cluster.in_flight` batches are out at once, so the coordinator's
memory stays bounded however many files a scan finds. Whatever the cluster cannot do (the
scheduler is gone, no worker is connected, a worker refused the model) is handed back to the
caller to classify here, never dropped and never sent twice: each batch comes back exactly once.
Imported only when a scheduler is configured (the cluster extra).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from distributed import Client, Future
from distributed.utils import LoopRunner

from tagger.config import ClusterConfig
from tagger.cluster.protocol import Job, JobResult, JobSettings, ModelIdentity, ModelMismatch
from tagger.cluster.worker import check_model, classify_job, security

log = logging.getLogger(__name__)

Batch = TypeVar("Batch")
Task = Callable[[Job], JobResult]

POLL_SECONDS = 0.5  # how often a blocked wait looks at the connection and the workers
TICK_SECONDS = 0.005  # how often it looks for a finished batch


class DaskToDebug(logging.Filter):
    """Dask's own log lines are for the debug log (-v): when the scheduler is killed it logs its
    reconnect attempts, then the traceback of a client closed under it with an empty message
    ("tagger: ERROR: "), before the coordinator's one clear line about it.

    Told by the file that logs, not the logger's name: Dask logs some of them under the bare name of
    a module ("client", "core").
    """

    def __init__(self) -> None:
        super().__init__()
        import dask
        import distributed

        self.folders = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (dask, distributed))

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(self.folders) or logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_dask() -> None:
    """DaskToDebug on every handler of the root logger (the CLI's stderr or journal), once."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, DaskToDebug) for f in handler.filters):
            handler.addFilter(DaskToDebug())


def why(exc: BaseException) -> str:
    """An exception in a few words, never an empty one (Dask's CancelledError has no message)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Cluster(Generic[Batch]):
    """Sends batches to the cluster while it is there; hands them back when it is not.

    `submit` returns False when the cluster cannot take a batch now (classify it here);
    `done` returns each submitted batch once, with its result, or None to classify it here.
    """

    def __init__(self, config: ClusterConfig, settings: JobSettings, task: Task = classify_job) -> None:
        assert config.scheduler is not None
        quiet_dask()
        self.config = config
        self.address = config.scheduler
        self.settings = settings
        self.task = task
        self._client: Client | None = None
        self._pending: dict[Future, Batch] = {}
        self._next_try = 0.0
        self._down_reason: str | None = None  # why the cluster is not used: said once, until it is back
        self._checked: set[str] = set()  # workers whose model was checked
        self._no_workers_since: float | None = None
        self._refused: set[str] = set()
        self._runner: LoopRunner | None = None
        self._workers_checked = float("-inf")

    # -- connection ------------------------------------------------------------------------

    def _usable(self) -> bool:
        """Connected, with at least one worker; tries again every `retry_seconds` while not."""
        if self._client is not None and self._client.status != "running":
            self._lost("the connection to the scheduler was lost")
        if self._client is None:
            if time.monotonic() < self._next_try:
                return False
            self._connect()
            if self._client is None:
                return False
        return self._check_workers()

    def _connect(self) -> None:
        # A plain TCP connection first: a Client that fails to connect leaves its event-loop
        # thread running, which a daemon retrying every 30 s for days cannot afford.
        host, port = self.address.split("://", 1)[1].rsplit(":", 1)
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=self.config.connect_timeout).close()
        except OSError as exc:
            self._set_down(f"cannot reach the scheduler {self.address} ({exc.strerror or exc})")
            return
        runner = LoopRunner(asynchronous=False)
        runner.start()
        try:
            self._client = Client(
                self.address,
                loop=runner.loop,
                timeout=self.config.connect_timeout,
                security=security(self.config, "client"),
                set_as_default=False,
                name="tagger-coordinator",
                direct_to_workers=False,  # only the scheduler's port need be reachable from here
            )
        except Exception as exc:  # OSError, TimeoutError, a TLS refusal: all mean "not now"
            runner.stop()
            self._client = None
            self._set_down(f"cannot reach the scheduler {self.address} ({why(exc)})")
            return
        self._runner = runner
        self._checked.clear()
        self._workers_checked = float("-inf")
        if self._down_reason is not None:
            log.warning("the scheduler %s is back: classifying on the cluster again", self.address)
        else:
            log.info("connected to the scheduler %s", self.address)
        self._down_reason = None

    def _check_workers(self) -> bool:
        """New workers are asked for their model; one with another model leaves (tagger.cluster.worker).

        Asking the scheduler is a round trip: done every POLL_SECONDS, not for every batch.
        """
        assert self._client is not None
        if self._down_reason is None and time.monotonic() - self._workers_checked < POLL_SECONDS:
            return True
        self._workers_checked = time.monotonic()
        try:
            workers = set(self._client.scheduler_info()["workers"])
            new = workers - self._checked
            if new:
                answers = self._client.run(check_model, self.settings.model, workers=sorted(new), on_error="return")
                for address, identity in answers.items():
                    self._checked.add(address)
                    if not isinstance(identity, ModelIdentity) or identity != self.settings.model:
                        self._refused.add(address)
                        log.error(
                            "worker %s refused: it runs %s, this coordinator %s",
                            address, identity if isinstance(identity, ModelIdentity) else "no tagger model",
                            self.settings.model,
                        )
        except Exception as exc:
            self._lost(f"the scheduler stopped answering ({why(exc)})")
            return False
        usable = workers - self._refused
        if not usable:
            self._no_workers_since = self._no_workers_since or time.monotonic()
            if self._down_reason is None:
                self._down_reason = f"no tagger worker is connected to {self.address}"
                log.warning("%s: classifying here until one is", self._down_reason)
            return False
        if self._no_workers_since is not None and self._down_reason is not None:
            log.warning("tagger workers joined %s: classifying on the cluster again", self.address)
            self._down_reason = None
        self._no_workers_since = None
        return True

    def _set_down(self, reason: str) -> None:
        self._next_try = time.monotonic() + self.config.retry_seconds
        if self._down_reason is None:  # one warning line per outage
            log.warning("%s: classifying here, trying it again every %g s", reason, self.config.retry_seconds)
        self._down_reason = reason

    def _lost(self, reason: str) -> None:
        self._disconnect(timeout=2)
        self._set_down(reason)

    def _disconnect(self, timeout: float) -> None:
        client, self._client = self._client, None
        runner, self._runner = self._runner, None
        if client is not None:
            try:
                client.close(timeout=timeout)
            except Exception as exc:  # closing a client whose scheduler is gone can fail: nothing to keep
                log.debug("closing the Dask client: %s", exc)
        if runner is not None:
            runner.stop()

    # -- the window ------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.config.in_flight

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def submit(self, batch: Batch, blobs: list[bytes], refine_allowed: int) -> bool:
        """Send one batch; False when the cluster cannot take it now (classify it here)."""
        if self.full or not self._usable():
            return False
        assert self._client is not None
        try:
            future = self._client.submit(self.task, self.settings.job(blobs, refine_allowed), pure=False, retries=2)
        except Exception as exc:
            self._lost(f"the scheduler stopped answering ({why(exc)})")
            return False
        self._pending[future] = batch
        return True

    def done(self, block: bool) -> list[tuple[Batch, JobResult | None]]:
        """Batches whose results came back (None: classify it here); with `block`, at least one."""
        finished: list[tuple[Batch, JobResult | None]] = []
        while self._pending:
            if self._client is None or self._client.status != "running":
                return finished + self._give_back_all("the connection to the scheduler was lost")
            ready = [f for f in self._pending if f.done()]
            if ready:
                finished += [self._collect(f) for f in ready]
                return finished
            if not block:
                return finished
            deadline = time.monotonic() + POLL_SECONDS
            while time.monotonic() < deadline and not any(f.done() for f in self._pending):
                time.sleep(TICK_SECONDS)  # a future's state is local: looking costs nothing
            if not any(f.done() for f in self._pending) and not self._waiting_is_useful():
                return finished + self._give_back_all(f"no tagger worker is connected to {self.address}")
        return finished

    def _waiting_is_useful(self) -> bool:
        """While no worker is connected for `retry_seconds`, the batches out come back here."""
        if self._client is None:
            return False
        try:
            workers = set(self._client.scheduler_info()["workers"]) - self._refused
        except Exception:
            return False
        if workers:
            self._no_workers_since = None
            return True
        self._no_workers_since = self._no_workers_since or time.monotonic()
        return time.monotonic() - self._no_workers_since < self.config.retry_seconds

    def _collect(self, future: Future) -> tuple[Batch, JobResult | None]:
        batch = self._pending.pop(future)
        try:
            result: Any = future.result(timeout=self.config.connect_timeout)
        except ModelMismatch as exc:
            log.error("%s; this batch is classified here", exc)
            return batch, None
        except Exception as exc:  # the worker died too often, a lost scheduler, a cancelled future
            log.warning("a batch came back from the cluster without tags (%s); classifying it here", why(exc))
            return batch, None
        finally:
            future.release()
        return batch, result if isinstance(result, JobResult) else None

    def _give_back_all(self, reason: str) -> list[tuple[Batch, JobResult | None]]:
        """Every batch still out is classified here; the cluster is tried again later."""
        back: list[tuple[Batch, JobResult | None]] = [(batch, None) for batch in self._pending.values()]
        futures = list(self._pending)
        self._pending.clear()
        if self._client is not None and self._client.status == "running" and "worker" in reason:
            try:
                self._client.cancel(futures)  # a worker joining later must not do them for nothing
            except Exception as exc:
                log.debug("cancelling batches given back: %s", exc)
            self._set_down(reason)  # connected but useless: keep the client, wait for workers
        else:
            self._lost(reason)
        return back

    def close(self) -> None:
        """Batches still out are dropped (their files are not in the index: the next scan tags them)."""
        self._pending.clear()
        self._disconnect(timeout=5)
