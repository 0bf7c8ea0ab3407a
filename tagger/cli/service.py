"""The long-running commands and their checks: run, worker, serve, health, status."""
from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import click

from tagger.cli.context import CLUSTER_HELP, Context, pass_ctx
from tagger.config import check_scheduler_address, with_scheduler
from tagger.daemon.systemd import Notifier
from tagger.errors import TaggerError
from tagger.fileio import json_text

log = logging.getLogger("tagger")


@click.command()
@click.option("--cluster", "scheduler", metavar="ADDRESS", help=CLUSTER_HELP)
@pass_ctx
def run(ctx: Context, scheduler: str | None) -> None:
    """Run the daemon: tag what changed since last time, then watch the folders live.

    SIGTERM or SIGINT finish the current batch and exit 0; SIGHUP reloads the config.
    Under systemd (Type=notify) it reports READY, STATUS and WATCHDOG.
    """
    from tagger.daemon.service import run_daemon

    path = Path(ctx.config_file) if ctx.config_file else None
    if scheduler is not None:
        check_scheduler_address(scheduler, "--cluster")
    sys.exit(run_daemon(path, scheduler))


@click.command()
@click.argument("address")
@click.option("--host", help="Address to listen on for the scheduler and the coordinator (default: the one that reaches the scheduler).")
@click.option("--nthreads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Batches classified at once (each uses every core: 1 is fastest on one machine).")
@pass_ctx
def worker(ctx: Context, address: str, host: str | None, nthreads: int) -> None:
    """Classify batches for `tagger scan`/`run --cluster` as a worker of the Dask scheduler at ADDRESS.

    Loads the configured model once, then serves until SIGTERM/SIGINT, rejoining the scheduler
    whenever it restarts. Refused (exit 2) when the coordinator runs another model or other weights.
    Needs no photos and no index. Dask workers run what the scheduler sends: see docs/security.md.
    """
    from tagger.engine.classify import Classifier

    check_scheduler_address(address, "ADDRESS")
    config = with_scheduler(ctx.config(require_folders=False), address)
    try:
        from tagger.cluster.worker import run_worker
    except ImportError as exc:
        raise TaggerError(f"tagger worker needs the cluster extra ({exc}): pip install 'tagger[cluster]'") from None
    notifier = Notifier()  # under systemd (Type=notify): READY once joined, WATCHDOG while its loop runs
    alive = (notifier.ping, notifier.watchdog_seconds / 3) if notifier.watchdog_seconds else None
    joined = lambda: notifier.ready(f"joined {address}")  # noqa: E731
    sys.exit(run_worker(Classifier.from_settings(config.model_choice()), address, config.cluster, nthreads, host,
                        joined, alive))


@click.command()
@click.option("--host", help="Address to listen on (default: web.host, 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: web.port, 8765; 0 picks a free one).")
@pass_ctx
def serve(ctx: Context, host: str | None, port: int | None) -> None:
    """Serve the web viewer and JSON API (browse, search, check an image) until stopped.

    Runs under waitress, a production WSGI server. The index is only read; a schema left
    by an older tagger is upgraded first.
    """
    import dataclasses

    from tagger.errors import StoreError
    from tagger.index import Index
    from tagger.web import create_app
    from tagger.web.guard import LOOPBACK_NAMES, WILDCARD_ADDRESSES
    from tagger.web.server import ViewerServer

    config = ctx.config(require_folders=False)
    web = dataclasses.replace(config.web, host=host or config.web.host, port=config.web.port if port is None else port)
    config = dataclasses.replace(config, web=web)
    if config.index.exists():
        try:  # an older tagger's index is upgraded here, once; from then on it is only read
            Index.open(config.index, readonly=True).close()
        except StoreError as exc:
            log.warning("%s", exc)
    else:
        log.warning("%s: no index yet: pages stay empty until `tagger scan` or `tagger run` makes it", config.index)
    if web.token is None and web.host not in LOOPBACK_NAMES:
        log.warning("listening on %s without web.token: anyone who can reach it can browse the library", web.host)
    if web.host.strip("[]") in WILDCARD_ADDRESSES and not web.allowed_hosts:
        log.warning(
            "listening on every address, but only localhost names are answered: list the names and addresses "
            "you browse to in web.allowed_hosts"
        )
    app = create_app(config)
    try:
        server = ViewerServer(app, web)
    except OSError as exc:
        raise TaggerError(f"cannot listen on {web.host}:{web.port}: {exc.strerror or exc}") from None
    shown = f"[{web.host}]" if ":" in web.host else web.host
    click.echo(f"tagger: serving {config.index} at http://{shown}:{server.effective_port}/ (Ctrl-C stops)")
    notifier = Notifier()  # under systemd (Type=notify): READY now, WATCHDOG while /health answers
    notifier.ready(f"serving on port {server.effective_port}")
    if notifier.watchdog_seconds:
        threading.Thread(target=_watch_viewer, args=(notifier, web.host, server.effective_port),
                         name="tagger-watchdog", daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        app.extensions["tagger"].close()


@click.command()
@click.option("--web", "web", is_flag=True, help="Ask the viewer (tagger serve) on web.host:web.port for /health instead.")
@pass_ctx
def health(ctx: Context, web: bool) -> None:
    """Exit 0 if `tagger run` is alive and reporting (for HEALTHCHECK and monitoring)."""
    config = ctx.config(require_folders=False)
    if web:
        click.echo(f"ok: {_viewer_health(config.web.host, config.web.port)}")
        return
    from tagger.daemon.service import read_status

    status = read_status(config.index)
    click.echo(f"ok: pid {status['pid']}, queue {status['queue']}")


def _watch_viewer(notifier: Notifier, host: str, port: int) -> None:
    """systemd's watchdog, fed while the viewer answers its own /health (any status: a 503 for an
    index not made yet is an answer); a viewer that stops answering is restarted by systemd."""
    assert notifier.watchdog_seconds is not None
    while True:
        try:
            _viewer_answer(host, port)
            notifier.ping()
        except TaggerError:
            pass
        time.sleep(notifier.watchdog_seconds / 3)


def _viewer_health(host: str, port: int) -> str:
    """The viewer's /health body; TaggerError unless it answers 200."""
    status, body = _viewer_answer(host, port)
    if status != 200:
        raise TaggerError(f"the viewer on {_local(host)}:{port} answers /health with {status}: {body}")
    return body


def _local(host: str) -> str:
    """The address a viewer bound to `host` answers on from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _viewer_answer(host: str, port: int) -> tuple[int, str]:
    """GET /health of the viewer on this machine (a wildcard address is asked on loopback): its
    status and the start of its body; TaggerError when nothing answers."""
    import http.client

    address = _local(host)
    connection = http.client.HTTPConnection(address, port, timeout=5)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status, response.read(4096).decode("utf-8", "replace").strip()[:200]
    except OSError as exc:
        raise TaggerError(f"the viewer on {address}:{port} does not answer: {exc}") from None
    finally:
        connection.close()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's whole status file (JSON) instead.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Show what the running daemon is doing: whether the library is up to date (or how far its
    start-up reconcile is), the queue, counts, and how each folder is watched."""
    from tagger.daemon.service import read_status

    info = read_status(ctx.config(require_folders=False).index)
    click.echo(json_text(info, indent=2) if as_json else "\n".join(_status_lines(info)))


def _status_lines(info: dict[str, object]) -> list[str]:
    """The status file, said in a few lines."""
    lines = [f"tagger run, pid {info.get('pid')}: {_library_line(info.get('library'))}"]
    lines.append(
        f"queue {info.get('queue')}; {info.get('classified')} classified, {info.get('reused')} from the index, "
        f"{info.get('failed')} failed since start"
    )
    limit = info.get("watch_limit")
    polled = limit.get("polled_folders", {}) if isinstance(limit, dict) else {}
    folders = info.get("folders")
    for folder, mode in (folders.items() if isinstance(folders, dict) else []):
        past = polled.get(folder) if isinstance(polled, dict) else None
        lines.append(f"{folder}: {mode}" + (f", {past:,} folders polled (inotify watch limit)" if past else ""))
    if polled and isinstance(limit, dict):
        lines.append(
            f"the inotify watch limit (fs.inotify.max_user_watches = {limit.get('max_user_watches')}) was reached: "
            "raise it with `sysctl fs.inotify.max_user_watches=524288`, then reload tagger (SIGHUP)"
        )
    return lines


def _library_line(library: object) -> str:
    if not isinstance(library, dict):
        return "starting"
    if library.get("state") == "up to date":
        since = time.strftime("%H:%M", time.localtime(float(library.get("since") or 0)))
        return f"library up to date since {since} ({library.get('checked', 0):,} files checked in {library.get('seconds')} s)"
    checked, expected = library.get("checked", 0), library.get("expected")
    if isinstance(expected, int) and isinstance(checked, int) and expected:
        return f"reconciling: {checked:,} of ~{max(expected, checked):,} files checked"
    return f"reconciling: {checked:,} files checked"
