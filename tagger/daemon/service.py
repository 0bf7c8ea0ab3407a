"""`tagger run`: keep every configured folder tagged, live, until stopped.

Wiring: watchers -> WorkQueue -> this worker (the index's only writer) -> Tagger.
Signals only set flags; the worker finishes its batch before acting on them, so a stop
never leaves anything half-written, and what was not done is found by the start-up
reconcile next time.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from tagger import __version__
from tagger.engine.classify import Classifier
from tagger.config import Config, load_config, with_scheduler
from tagger.fileio import is_empty_folder, json_text, write_atomic, write_problem
from tagger.errors import DiskError, StoreBusy, TaggerError
from tagger.library.lock import IndexLocked, index_lock
from tagger.vectors.embeddings import backfill
from tagger.cluster.choice import scan_backend
from tagger.library.scan import Tagger
from tagger.library.summary import ScanSummary
from tagger.index import Index
from tagger.daemon.progress import ReconcileProgress
from tagger.daemon.systemd import Notifier
from tagger.daemon.watch import Watcher, watch_limit
from tagger.daemon.workqueue import Delete, DeleteTree, Move, Reconcile, TagFiles, Work, WorkQueue

log = logging.getLogger(__name__)

IDLE_WAKE_SECONDS = 30.0
STATUS_EVERY_SECONDS = 5.0
HEALTHY_WITHIN_SECONDS = 3 * IDLE_WAKE_SECONDS
BUSY_RETRY_SECONDS = 2.0  # between tries while another process holds the index's write lock
DISK_RETRY_SECONDS = 30.0  # between tries while the index's disk is full
EMPTY_ROOT_QUIET_SECONDS = 60.0  # deletions under an empty root this close together are one event: one warning


def status_path(index: Path) -> Path:
    """`tagger health` and `tagger status` read what the running daemon writes here."""
    return index.with_name(index.name + ".status.json")


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at `path` (device and inode), None when there is none: a deleted or replaced index shows."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def read_status(index: Path) -> dict[str, object]:
    """The daemon's last status; raises TaggerError when it is absent, unreadable or stale."""
    path = status_path(index)
    try:
        status: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaggerError(f"{path}: no status: `tagger run` has not started for this index") from None
    except (OSError, ValueError) as exc:
        raise TaggerError(f"{path}: unreadable status: {exc}") from None
    age = time.time() - float(status.get("updated", 0))  # type: ignore[arg-type]
    if status.get("state") == "stopped":
        raise TaggerError(f"tagger run stopped {age:.0f} s ago")
    if age > HEALTHY_WITHIN_SECONDS:
        raise TaggerError(f"tagger run has not reported for {age:.0f} s (stuck or killed?)")
    return status


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        notifier: Notifier | None = None,
        classifier: Classifier | None = None,
    ) -> None:
        self.config = config
        self.classifier = classifier
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.queue = WorkQueue(
            config.watch.stable_seconds,
            config.watch.open_timeout,
            config.watch.delete_grace_seconds,
            config.watch.queue_limit,
        )
        self.summary = ScanSummary()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._next_reconcile = 0.0
        self._status_written = 0.0
        self._status_failed = False
        self._empty_roots: dict[Path, float] = {}  # roots found empty, and when a deletion under one last was
        self.progress: ReconcileProgress | None = None  # the start-up reconcile, once started
        self._watcher: Watcher | None = None

    # -- signals: flags only ---------------------------------------------------------------

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stop.set()
        self.queue.stop()

    def request_reload(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._reload.set()
        self.queue.interrupt()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    # -- the worker ------------------------------------------------------------------------

    def run(self) -> int:
        try:
            with index_lock(self.config.index, "run", wait=self._stop.wait):
                return self._run_locked()
        except IndexLocked:
            if self._stop.is_set():  # stopped while a scan held the index: a clean stop
                return 0
            raise

    def _run_locked(self) -> int:
        classifier = self.classifier or Classifier.from_settings(self.config.model_choice())
        store = self._open_store()
        if store is None:
            return 0
        with store:
            tagger = Tagger(self.config, classifier, store, scan_backend(self.config.cluster))
            watcher = Watcher(self.queue, self.config.watch)
            try:
                code = self._serve(tagger, watcher, _identity(self.config.index))
            finally:
                self.notifier.stopping()
                watcher.stop()
                tagger.close()
                self._write_status(watcher, "stopped")
        log.info("stopped: %s", self._status_line())
        return code

    def _open_store(self) -> Index | None:
        """The index, once its disk lets it open; None when stopped while waiting."""
        warned = False
        while True:
            try:
                return Index.open(self.config.index)
            except DiskError as exc:
                if not warned:
                    log.error("%s; retrying every %.0f s", exc, DISK_RETRY_SECONDS)
                    warned = True
            if self._stop.wait(DISK_RETRY_SECONDS):
                return None

    def _serve(self, tagger: Tagger, watcher: Watcher, opened: tuple[int, int] | None) -> int:
        """Watch and tag until stopped: 0; 1 when the index file was deleted or replaced meanwhile
        (what is written now would go into a file nobody reads: stop, and be started again)."""
        watcher.watch(self.config.folders)
        self._watcher = watcher
        self.progress = ReconcileProgress(self.config.folders, sum(tagger.store.counts()))
        for folder in self.config.folders:
            self.queue.reconcile(folder)  # what changed while we were down
        self._schedule_reconcile()
        self._write_status(watcher, "running")
        self.ready.set()
        log.info("ready: model %s, watching %d folders", tagger.classifier.name, len(self.config.folders))
        self.notifier.ready(self._status_line())
        heartbeat = min(IDLE_WAKE_SECONDS, (self.notifier.watchdog_seconds or 60.0) / 2)
        while not self._stop.is_set():
            if _identity(self.config.index) != opened:
                log.error(
                    "%s: the index was deleted or replaced while tagger ran; stopping before writing into a file "
                    "nobody reads (systemd starts tagger again, which opens or makes the index afresh)",
                    self.config.index,
                )
                return 1
            if self._reload.is_set():
                self._reload.clear()
                self._apply_reload(tagger, watcher)
            timeout = max(0.0, min(heartbeat, self._next_reconcile - time.monotonic()))
            work = self.queue.next_work(self.config.model.batch_size, timeout)
            if work is not None:
                self._do_patiently(work, tagger)
                self.notifier.status(self._status_line())
                if not len(self.queue):  # the burst is over: `tagger status` shows it at once
                    self._write_status(watcher, "running")
            else:
                watcher.supervise()
                if self.config.watch.reconcile_interval and time.monotonic() >= self._next_reconcile:
                    for folder in self.config.folders:
                        self.queue.reconcile(folder)
                    self._schedule_reconcile()
            self.notifier.ping()
            if time.monotonic() - self._status_written >= STATUS_EVERY_SECONDS:
                self._write_status(watcher, "running")
        return 0

    def _do_patiently(self, work: Work, tagger: Tagger) -> None:
        """Do the work; while another process holds the index's write lock (a long `tagger retag`
        on a big library, say), wait and do it again: redoing is safe, a file's content is
        classified once. Stopping meanwhile leaves it to the next start's reconcile."""
        warned = False
        while True:
            try:
                self._do(work, tagger)
                if warned:
                    log.info("the index takes writes again; going on")
                return
            except StoreBusy as exc:
                if not warned:
                    log.warning("%s; waiting for it to finish", exc)
                    warned = True
                pause = BUSY_RETRY_SECONDS
            except DiskError as exc:
                if not warned:
                    log.error("%s; retrying every %.0f s", exc, DISK_RETRY_SECONDS)
                    warned = True
                pause = DISK_RETRY_SECONDS
            if self._stop.wait(pause):
                return
            self.notifier.ping()

    def _do(self, work: Work, tagger: Tagger) -> None:
        if isinstance(work, (Delete, DeleteTree)):
            first = work.paths[0] if isinstance(work, Delete) else work.folder
            if is_empty_folder(root := self._root_of(first)):
                # A polled share that is unmounted shows every file deleted; its rows wait for its return.
                # Said once for the whole burst of deletions (one a file or a folder), not once each.
                now, last = time.monotonic(), self._empty_roots.get(root)
                if last is None or now - last > EMPTY_ROOT_QUIET_SECONDS:
                    log.warning("%s: the folder is empty (an unmounted share?): deletions under it are not applied", root)
                self._empty_roots[root] = now
                return
        match work:
            case TagFiles(paths):
                tagger.tag_files(list(paths), self.summary)
            case Move(src, dst) if dst.is_dir():
                moved = tagger.move_tree(src, dst)
                log.info("moved %s -> %s (%d files keep their tags)", src, dst, moved)
            case Move(src, dst):
                if not tagger.move(src, dst):
                    tagger.tag_files([dst], self.summary)
            case Delete(paths):
                tagger.forget(list(paths))
            case DeleteTree(folder):
                tagger.forget_tree(folder)
            case Reconcile(folder):
                self._reconcile(folder, tagger)
                self._reconciled(folder)

    def _reconcile(self, folder: Path, tagger: Tagger) -> None:
        if not folder.is_dir():
            log.warning("%s: not reachable; reconciled when it is back", folder)
            return
        root = self._root_of(folder)
        result = tagger.scan(
            [folder],
            on_progress=self._checked,
            defer_recent=lambda path: self.queue.changed(path, root),
            cancelled=self._stop.is_set,
        )
        self.summary.add(result)
        if result.classified or result.reused or result.failed or result.removed:
            log.info(
                "reconciled %s: %d classified, %d from the index, %d failed, %d removed",
                folder, result.classified, result.reused, result.failed, result.removed,
            )
        embedded = backfill(self.config, tagger.classifier, tagger.store, cancelled=self._stop.is_set)
        if embedded.missing:  # an index from before embeddings
            log.info("embeddings: %d computed for images indexed before them", embedded.computed)

    def _checked(self, files: int) -> None:
        """The reconcile's progress: systemd's watchdog fed; the status said every few seconds."""
        self.notifier.ping()
        if self.progress is None:
            return
        self.progress.checked(files)
        if time.monotonic() - self._status_written >= STATUS_EVERY_SECONDS and self._watcher is not None:
            self._write_status(self._watcher, "running")
            self.notifier.status(self._status_line())

    def _reconciled(self, folder: Path) -> None:
        """A start-up reconcile that ran to its end (not stopped, the folder there) counts."""
        if self.progress is None or self._stop.is_set() or not folder.is_dir():
            return
        if self.progress.folder_done(folder):
            log.info("%s", self.progress.done_line())
            if self._watcher is not None:
                self._write_status(self._watcher, "running")
            self.notifier.status(self._status_line())

    def _root_of(self, path: Path) -> Path:
        for folder in self.config.folders:
            if path == folder or folder in path.parents:
                return folder
        return path

    def _apply_reload(self, tagger: Tagger, watcher: Watcher) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except TaggerError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            self.notifier.ready(self._status_line())
            return
        if (new.model.name, new.index) != (self.config.model.name, self.config.index):
            log.warning("model.name and index changes need a restart; applying the rest")
            new = dataclasses.replace(new, model=self.config.model, index=self.config.index)
        if new.cluster != self.config.cluster:
            log.warning("cluster changes need a restart; applying the rest")
        new = dataclasses.replace(new, cluster=self.config.cluster)  # and --cluster stays
        added = [f for f in new.folders if f not in self.config.folders]
        self.config = new
        tagger.reconfigure(new)
        watcher.config = new.watch
        self.queue.configure(new.watch.stable_seconds, new.watch.open_timeout, new.watch.delete_grace_seconds)
        watcher.watch(new.folders)
        for folder in added:
            self.queue.reconcile(folder)
        log.info("reloaded %s: watching %d folders", self.config_path, len(new.folders))
        self._write_status(watcher, "running")  # how each folder is watched may have changed
        self.notifier.ready(self._status_line())

    def _write_status(self, watcher: Watcher, state: str) -> None:
        s = self.summary
        status = {
            "state": state,
            "pid": os.getpid(),
            "updated": time.time(),
            "queue": len(self.queue),
            "classified": s.classified,
            "reused": s.reused,
            "refined": s.refined,
            "failed": s.failed,
            **({"cluster": {"scheduler": self.config.cluster.scheduler, "by_worker": s.by_worker,
                            "classified_here": s.classified_here}} if self.config.cluster.scheduler else {}),
            "folders": {str(folder): mode for folder, mode in watcher.folders.items()},
            **({"library": self.progress.as_status()} if self.progress is not None else {}),
            **({"watch_limit": {"max_user_watches": watch_limit(),
                                "polled_folders": {str(f): n for f, n in past.items()}}}
               if (past := watcher.past_limit()) else {}),
        }
        try:
            write_atomic(status_path(self.config.index), json_text(status, indent=2).encode())
        except OSError as exc:
            if not self._status_failed:  # once, not every few seconds while a disk stays full
                log.warning("%s: cannot write status: %s", status_path(self.config.index), write_problem(exc, self.config.index))
            self._status_failed = True
        else:
            self._status_failed = False
        self._status_written = time.monotonic()

    def _schedule_reconcile(self) -> None:
        interval = self.config.watch.reconcile_interval
        self._next_reconcile = time.monotonic() + (interval if interval else 10 * 365 * 86400)

    def _status_line(self) -> str:
        s = self.summary
        library = f"{self.progress.line()}; " if self.progress is not None else ""
        past = sum(self._watcher.past_limit().values()) if self._watcher is not None else 0
        limit = f"; {past:,} folders polled: inotify watch limit reached" if past else ""
        return (
            f"{library}queue {len(self.queue)}; {s.classified} classified, {s.reused} from the index, "
            f"{s.failed} failed since start{limit}"
        )


def run_daemon(config_path: Path | None, scheduler: str | None = None) -> int:
    config = with_scheduler(load_config(config_path), scheduler)
    daemon = Daemon(config, config_path)
    daemon.install_signal_handlers()
    log.info("tagger %s starting (pid %d)", __version__, os.getpid())
    return daemon.run()
