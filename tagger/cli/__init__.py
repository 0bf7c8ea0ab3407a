"""The `tagger` command. The only place where errors become messages and exit codes."""
from __future__ import annotations

import csv
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from tagger import __version__

from tagger.engine import fastjpeg
from tagger.cli.model import MODEL_COMMANDS
from tagger.cli.vectors import COMMANDS, backfill_after_scan
from tagger.config import Config, check_scheduler_address, load_config, with_scheduler
from tagger.cpu import cpu_info, int8_scheme
from tagger.errors import ConfigError, DiskError, StoreError, TaggerError
from tagger.fileio import json_text, shown
from tagger.daemon.systemd import JournalFormatter, under_journal
from tagger.tags.terms import Action
from tagger.engine.weights import MODELS, candidate_paths, fetch, find_weights, locate, verify

if TYPE_CHECKING:
    from tagger.library.scan import ScanSummary

log = logging.getLogger("tagger")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it (128 + SIGINT)


class _Context:
    def __init__(self, config_file: str | None) -> None:
        self.config_file = config_file

    def config(self, *, require_folders: bool = True) -> Config:
        return load_config(self.config_file, require_folders=require_folders)


pass_ctx = click.make_pass_decorator(_Context)


class _Failure(click.ClickException):
    """A TaggerError on its way out: one line on stderr and its exit code."""

    exit_code = EXIT_FAILURE

    def show(self, file: Any = None) -> None:
        click.echo(f"tagger: error: {self.message}", err=True)


class _UsageFailure(_Failure):
    """A ConfigError: the user's setup is wrong (exit 2, as for a usage error)."""

    exit_code = EXIT_USAGE


class _TaggerGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise _UsageFailure(str(exc)) from None
        except TaggerError as exc:
            raise _Failure(str(exc)) from None


@click.group(cls=_TaggerGroup, commands=[*MODEL_COMMANDS, *COMMANDS], context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tagger")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="TAGGER_CONFIG",
    help="Config file (default: config/tagger.yaml, or $TAGGER_CONFIG).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
@click.option("-q", "--quiet", is_flag=True, help="Only log errors.")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: bool, quiet: bool) -> None:
    """Offline image auto-tagger: classify images, write sidecars, keep a SQLite index."""
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if under_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("tagger: %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("watchdog").setLevel(max(level, logging.WARNING))
    ctx.obj = _Context(config_file)


CLUSTER_HELP = "Classify on the Dask cluster of this scheduler (tcp://HOST:PORT or tls://HOST:PORT); see cluster: in the config."


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--cluster", "scheduler", metavar="ADDRESS", help=CLUSTER_HELP)
@click.option("--prune", is_flag=True, help="Also forget the files of a folder that is empty now (without it, an "
              "empty folder whose files are in the index is taken for an unmounted share and left alone).")
@pass_ctx
def scan(ctx: _Context, paths: tuple[Path, ...], scheduler: str | None, prune: bool) -> None:
    """Tag every image under PATHS (default: the configured folders).

    Writes a sidecar next to each image and a row in the index. Bad files are
    reported and recorded; the scan goes on and still exits 0. SIGTERM or Ctrl-C
    finish the current batch and print the summary (exit 0 on SIGTERM, 130 on Ctrl-C).
    Refused while `tagger run` keeps the same index (it tags those folders itself).
    """
    from tagger.engine.classify import Classifier
    from tagger.library.lock import index_lock
    from tagger.library.scan import ScanSummary, Tagger
    from tagger.index import Index

    config = with_scheduler(ctx.config(), scheduler)
    roots = list(paths) or list(config.folders)
    if not roots:
        raise ConfigError(f"{config.source}: key 'folders' is empty and no PATH was given: nothing to scan")
    summary = ScanSummary()
    with index_lock(config.index, "scan"), _stop_signals() as stopped:
        classifier = Classifier.from_config(config)
        try:
            with Index.open(config.index) as store, _progress() as on_progress:
                tagger = Tagger(config, classifier, store)
                try:
                    tagger.scan(roots, on_progress, cancelled=lambda: bool(stopped), summary=summary, prune=prune)
                finally:
                    tagger.close()
                    summary.checked = classifier.checked  # this process's classifier: this scan's close calls
            backfill_after_scan(config, classifier, stopped)  # an index from before embeddings
        except DiskError:
            if summary.files:  # what was done before the disk filled up
                _print_summary(summary, classifier.name, config)
            raise
    _print_summary(summary, classifier.name, config)
    if stopped:
        left = summary.files - summary.tagged - summary.unchanged - summary.failed
        click.echo(f"stopped by {signal.Signals(stopped[0]).name}: {left} images left for the next scan", err=True)
        if stopped[0] == signal.SIGINT:
            sys.exit(EXIT_INTERRUPTED)


@contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """SIGTERM and SIGINT become a request to stop after the current batch (the list gets the signal)."""
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_summary(summary: ScanSummary, model: str, config: Config) -> None:
    rate = summary.classified / summary.seconds if summary.seconds else 0.0
    click.echo(
        f"{summary.files} images: {summary.classified} classified by {model}"
        f"{f' ({summary.refined} near ties decoded again in full)' if summary.refined else ''}"
        f"{f' ({summary.checked} close calls of INT8 run again in fp32)' if summary.checked else ''}, "
        f"{summary.reused} from the index (same content), {summary.unchanged} unchanged, "
        f"{summary.failed} failed, {summary.removed} removed from the index; "
        f"{summary.seconds:.1f} s ({rate:.1f} images/s)"
    )
    if config.cluster.scheduler is not None:
        click.echo(summary.where(config.cluster.scheduler))
    if summary.sidecar_errors:
        click.echo(f"{summary.sidecar_errors} sidecars could not be written (tags are in the index)", err=True)
    for path, reason in summary.failures:
        click.echo(f"failed: {shown(path)}: {reason}", err=True)


@cli.command()
@click.option("--cluster", "scheduler", metavar="ADDRESS", help=CLUSTER_HELP)
@pass_ctx
def run(ctx: _Context, scheduler: str | None) -> None:
    """Run the daemon: tag what changed since last time, then watch the folders live.

    SIGTERM or SIGINT finish the current batch and exit 0; SIGHUP reloads the config.
    Under systemd (Type=notify) it reports READY, STATUS and WATCHDOG.
    """
    from tagger.daemon.service import run_daemon

    path = Path(ctx.config_file) if ctx.config_file else None
    if scheduler is not None:
        check_scheduler_address(scheduler, "--cluster")
    sys.exit(run_daemon(path, scheduler))


@cli.command()
@click.argument("address")
@click.option("--host", help="Address to listen on for the scheduler and the coordinator (default: the one that reaches the scheduler).")
@click.option("--nthreads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Batches classified at once (each uses every core: 1 is fastest on one machine).")
@pass_ctx
def worker(ctx: _Context, address: str, host: str | None, nthreads: int) -> None:
    """Classify batches for `tagger scan`/`run --cluster` as a worker of the Dask scheduler at ADDRESS.

    Loads the configured model once, then serves until SIGTERM/SIGINT, rejoining the scheduler
    whenever it restarts. Refused (exit 2) when the coordinator runs another model or other weights.
    Needs no photos and no index. Dask workers run what the scheduler sends: see README, "Who can connect".
    """
    from tagger.engine.classify import Classifier

    check_scheduler_address(address, "ADDRESS")
    config = with_scheduler(ctx.config(require_folders=False), address)
    try:
        from tagger.cluster.worker import run_worker
    except ImportError as exc:
        raise TaggerError(f"tagger worker needs the cluster extra ({exc}): pip install 'tagger[cluster]'") from None
    sys.exit(run_worker(Classifier.from_config(config), address, config.cluster, nthreads, host))


@cli.command()
@pass_ctx
def health(ctx: _Context) -> None:
    """Exit 0 if `tagger run` is alive and reporting (for HEALTHCHECK and monitoring)."""
    from tagger.daemon.service import read_status

    status = read_status(ctx.config(require_folders=False).index)
    click.echo(f"ok: pid {status['pid']}, queue {status['queue']}")


@cli.command()
@pass_ctx
def status(ctx: _Context) -> None:
    """Show what the running daemon is doing: queue, counts, folders and how each is watched."""
    from tagger.daemon.service import read_status

    info = read_status(ctx.config(require_folders=False).index)
    click.echo(json_text(info, indent=2))


@contextmanager
def _progress() -> Iterator[Any]:
    """A progress bar on a terminal; nothing in logs and pipes."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(unit="img", file=sys.stderr, dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()


@cli.command()
@click.argument("text", metavar="[QUERY]", required=False, default="")
@click.option("--tag", "tags", multiple=True, help="A tag, as tag:T in QUERY; repeat to AND.")
@click.option("--min-score", type=click.FloatRange(0, 1), help="Least score of a matching keyword, as score:S.. in QUERY.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["paths", "paths0", "json", "csv"]),
    default="paths",
    show_default=True,
    help="paths: one per line; paths0: each followed by a NUL byte (for xargs -0); json; csv.",
)
@click.option("-0", "nul", is_flag=True, help="Same as --format paths0.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many files.")
@pass_ctx
def query(
    ctx: _Context, text: str, tags: tuple[str, ...], min_score: float | None, fmt: str, nul: bool, limit: int | None
) -> None:
    """List tagged files matching QUERY, best match first.

    \b
    QUERY words (all must match; ^ negates tag: and folder:):
      dog  tag:"sports car"  猫     a keyword, category, alias, label, WordNet id or class number
      class:tabby  class:281        a raw guess of the model (ImageNet label, WordNet id, number)
      score:0.6..  score:..0.3      score of the matching keywords
      folder:2024  folder:/srv/x    a folder name in the path, or an absolute folder
      added:-1w..  date:2023..2024-06   first seen by tagger / file modified
    Example: tagger query 'tag:dog score:0.6.. ^tag:cat folder:2024 added:-1w..'
    """
    import dataclasses
    import io

    from tagger.tags.searchterms import UnknownTag, resolve_query
    from tagger.tags.querylang import QueryError, parse
    from tagger.tags.rules import Rules
    from tagger.index import Index

    config = ctx.config(require_folders=False)
    rules = Rules.load(config.rules)
    try:
        parsed = parse(text)
        parsed = dataclasses.replace(
            parsed,
            tags=parsed.tags + tags,
            score_min=parsed.score_min if min_score is None else max(min_score, parsed.score_min or 0.0),
        )
        store = Index.open(config.index, readonly=True) if config.index.exists() else None
        search = resolve_query(rules, parsed, store.has_term if store else lambda term: False)
    except (QueryError, UnknownTag) as exc:
        raise click.BadParameter(str(exc), param_hint="QUERY") from None
    if store is None:
        raise StoreError(f"{config.index}: no index yet (run `tagger scan` first)")
    with store:
        rows = store.search(search, limit, config.model.min_score)
        keywords = {r.sha256: store.keywords(r.sha256) for r in rows} if fmt == "json" else {}
    if nul:
        fmt = "paths0"
    out = sys.stdout.buffer
    if fmt in ("paths", "paths0"):  # names as the bytes they are (os.fsencode), whatever their encoding
        end = b"\0" if fmt == "paths0" else b"\n"
        out.write(b"".join(os.fsencode(row.path) + end for row in rows))
        out.flush()
    elif fmt == "json":
        found = [
            {
                "path": r.path,
                "sha256": r.sha256,
                "model": r.model,
                "tags": [t.as_dict() for t in r.tags],
                "keywords": [k.as_dict() for k in keywords[r.sha256]],
            }
            for r in rows
        ]
        click.echo(json_text(found, indent=2))
    else:
        text_out = io.TextIOWrapper(out, encoding="utf-8", errors="surrogateescape", newline="", write_through=True)
        writer = csv.writer(text_out, lineterminator="\n")
        writer.writerow(["path", "rank", "class_id", "wnid", "label", "label_zh", "score"])
        for r in rows:
            for rank, t in enumerate(r.tags):
                writer.writerow([r.path, rank, t.class_id, t.wnid, t.label, t.label_zh, f"{t.score:.6f}"])
        text_out.detach()


@cli.command()
@click.option("--all", "everything", is_flag=True, help="Rebuild every image's keywords, not only the changed.")
@pass_ctx
def retag(ctx: _Context, everything: bool) -> None:
    """Re-apply the rules, min_score and corrections to the stored raw tags (no model run).

    Only images with a raw tag that a changed rule or threshold touches are looked at, and
    only those whose keywords changed get their sidecars (JSON and XMP) rewritten.
    """
    from tagger.index import Index
    from tagger.library.keywording import Retagger

    config = ctx.config(require_folders=False)
    with Index.open(config.index) as store, _progress() as on_progress:
        summary = Retagger(config, store).retag(everything=everything, on_progress=on_progress)
    click.echo(
        f"{summary.contents} images looked at: keywords changed for {summary.changed}, "
        f"{summary.sidecars} files' sidecars rewritten; {summary.seconds:.1f} s (no model run)"
    )


@cli.group()
def tag() -> None:
    """Correct an image's keywords; corrections survive re-tags, moves and a change of model."""


def _correction_command(action: Action, summary: str) -> None:
    """`tagger tag add` and `tagger tag remove`: the same arguments, the opposite correction."""

    @tag.command(action, help=summary)
    @click.argument("image", type=click.Path(path_type=Path))
    @click.argument("keywords", nargs=-1, required=True)
    @pass_ctx
    def correct(ctx: _Context, image: Path, keywords: tuple[str, ...]) -> None:
        from tagger.library.corrections import correct as correct_image
        from tagger.index import Index
        from tagger.library.keywording import Retagger

        config = ctx.config(require_folders=False)
        with Index.open(config.index) as store:
            _show_keywords(store, correct_image(Retagger(config, store), image.resolve(), keywords, action))


_correction_command("add", "Add KEYWORDS to IMAGE (and every copy of it) as your own.")
_correction_command("remove", "Remove KEYWORDS from IMAGE (and every copy of it), whatever the rules say later.")


@tag.command("show")
@click.argument("image", type=click.Path(path_type=Path))
@pass_ctx
def tag_show(ctx: _Context, image: Path) -> None:
    """Show IMAGE's keywords: the model's (after rules) and your own."""
    from tagger.index import Index

    config = ctx.config(require_folders=False)
    with Index.open(config.index, readonly=True) as store:
        record = store.file_record(str(image.resolve()))
        if record is None or record.sha256 is None:
            raise TaggerError(f"{image}: not a tagged image in the index (run `tagger scan` first)")
        _show_keywords(store, record.sha256)


def _show_keywords(store: Any, sha256: str) -> None:
    """One line per keyword, the model's and the user's; then the keywords the user removed."""
    for row in store.keywords(sha256):
        click.echo(f"{row.source:5}  {row.score:6.1%}  {row.path}  ({row.path_zh})")
    for correction in store.corrections(sha256):
        if correction.action == "remove":
            click.echo(f"removed by user: {correction.keyword}")


@cli.command()
@pass_ctx
def stats(ctx: _Context) -> None:
    """Counts from the index: files, failures, models, most common tags."""
    from tagger.index import Index

    config = ctx.config(require_folders=False)
    with Index.open(config.index, readonly=True) as store:
        s = store.stats()
    click.echo(f"index: {config.index}")
    click.echo(f"files tagged: {s.files_tagged}")
    click.echo(f"files failed: {s.files_failed}")
    click.echo(f"distinct images classified: {s.images} (a photo and its copies count once)")
    if s.images_without_files:
        click.echo(
            f"  of which no longer in any file: {s.images_without_files} "
            "(their tags are kept, so a file put back or copied in costs no model run)"
        )
    for model, count in s.models.items():
        click.echo(f"  by {model}: {count}")
    if s.top_labels:
        click.echo("most common top tags:")
        for label, label_zh, count in s.top_labels:
            click.echo(f"  {count:6d}  {label} ({label_zh})")
    if s.files_failed:
        click.echo("list the failed files with: tagger failures")


@cli.group(invoke_without_command=True)
@click.pass_context
def weights(ctx: click.Context) -> None:
    """Show which models are installed and where their weights come from."""
    if ctx.invoked_subcommand is not None:
        return
    config = ctx.find_object(_Context).config(require_folders=False)  # type: ignore[union-attr]
    for name, spec in MODELS.items():
        marks = []
        if name == config.model.name:
            marks.append("configured")
        if name == config.model.fallback:
            marks.append("fallback")
        label = f"{name} ({', '.join(marks)})" if marks else name
        path = locate(spec, config.weights_dir)
        if path is None:
            click.echo(f"{label}: not installed")
            click.echo(f"  looked in: {', '.join(str(p) for p in candidate_paths(spec, config.weights_dir))}")
        else:
            try:
                verified = find_weights(spec, config.weights_dir)
                click.echo(f"{label}: installed, {verified.path} (sha256 {verified.sha256[:16]}..., verified)")
            except TaggerError as exc:
                click.echo(f"{label}: BROKEN: {exc}")
        click.echo(f"  source: {spec.source}")
    click.echo(f"CPU: {cpu_info().describe()}; model.precision int8 would use the {int8_scheme()} scheme here")
    click.echo(f"JPEG decoding and resizing: {fastjpeg.describe()}")


@weights.command("fetch")
@click.argument("model", type=click.Choice(sorted(MODELS)))
@click.option("--url", help="Download from this address instead (a mirror).")
@click.option("--if-missing", is_flag=True, help="Do nothing when a file with the right hash is already installed.")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
              help="Seconds to wait for the server before giving up.")
@pass_ctx
def weights_fetch(ctx: _Context, model: str, url: str | None, if_missing: bool, timeout: float) -> None:
    """Download MODEL's weights into weights_dir and check their hash (needs a network)."""
    config = ctx.config(require_folders=False)
    spec = MODELS[model]
    existing = locate(spec, config.weights_dir)
    if existing is not None and (spec.url is None or if_missing):
        verify(spec, existing)
        click.echo(f"{model}: already installed at {existing} (sha256 verified)")
        return
    result = fetch(spec, config.weights_dir, url, timeout)
    click.echo(f"{model}: saved {result.path} (sha256 {result.sha256[:16]}..., verified)")


@weights.command("prepare")
@pass_ctx
def weights_prepare(ctx: _Context) -> None:
    """Load the configured model once, making its ONNX export (install time: the daemon then never needs PyTorch).

    Run it after installing, and after changing model.name, model.precision or the weights file;
    systemd/install.sh and the Dockerfile do. The export is cached in weights_dir/onnx/.
    """
    from tagger.engine.classify import Classifier

    config = ctx.config(require_folders=False)
    classifier = Classifier.from_config(config)
    if classifier.runtime == "torch" and config.model.runtime != "torch":
        raise TaggerError(
            f"{classifier.name}: no ONNX export could be made (see the warning above), so `tagger run` would need "
            "PyTorch, which the service unit's MemoryDenyWriteExecute=yes refuses"
        )
    click.echo(f"{classifier.name}: ready for `tagger run` ({classifier.runtime}, weights {classifier.weights.path})")


@cli.command()
@click.option("--host", help="Address to listen on (default: web.host, 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: web.port, 8765; 0 picks a free one).")
@pass_ctx
def serve(ctx: _Context, host: str | None, port: int | None) -> None:
    """Serve the web viewer and JSON API (browse, search, check an image) until stopped.

    Runs under waitress, a production WSGI server. The index is only read; a schema left
    by an older tagger is upgraded first.
    """
    import dataclasses

    from tagger.index import LATEST, Index
    from tagger.web import create_app
    from tagger.web.guard import LOOPBACK_NAMES, WILDCARD_ADDRESSES
    from tagger.web.server import ViewerServer

    config = ctx.config(require_folders=False)
    web = dataclasses.replace(config.web, host=host or config.web.host, port=config.web.port if port is None else port)
    config = dataclasses.replace(config, web=web)
    if config.index.exists():
        with Index.open(config.index, readonly=True) as current:
            outdated = current.schema_version() < LATEST
        if outdated:
            Index.open(config.index).close()  # applies the pending migrations; from then on only reads
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
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        app.extensions["tagger"].close()


@cli.command()
@pass_ctx
def failures(ctx: _Context) -> None:
    """List files that could not be tagged, with the reason."""
    from tagger.index import Index

    config = ctx.config(require_folders=False)
    with Index.open(config.index, readonly=True) as store:
        for f in store.failures():
            click.echo(f"{shown(f.path)}: {f.error}")


def main() -> None:
    cli(prog_name="tagger")
