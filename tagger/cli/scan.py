"""Commands that write the library: scan, retag, tag (corrections), failures."""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tagger.cli.context import (
    CLUSTER_HELP,
    EXIT_INTERRUPTED,
    Context,
    pass_ctx,
    progress,
    stop_signals,
)
from tagger.config import Config, with_scheduler
from tagger.errors import ConfigError, DiskError, TaggerError
from tagger.fileio import shown
from tagger.tags.terms import Action

if TYPE_CHECKING:
    from tagger.library.summary import ScanSummary

log = logging.getLogger("tagger")


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--cluster", "scheduler", metavar="ADDRESS", help=CLUSTER_HELP)
@click.option("--prune", is_flag=True, help="Also forget the files of a folder that is empty now (without it, an "
              "empty folder whose files are in the index is taken for an unmounted share and left alone).")
@pass_ctx
def scan(ctx: Context, paths: tuple[Path, ...], scheduler: str | None, prune: bool) -> None:
    """Tag every image under PATHS (default: the configured folders).

    Writes a sidecar next to each image and a row in the index. Bad files are
    reported and recorded; the scan goes on and still exits 0. SIGTERM or Ctrl-C
    finish the current batch and print the summary (exit 0 on SIGTERM, 130 on Ctrl-C).
    Refused while `tagger run` keeps the same index (it tags those folders itself).
    """
    from tagger.cluster.choice import scan_backend
    from tagger.engine.classify import Classifier
    from tagger.index import Index
    from tagger.library.lock import index_lock
    from tagger.library.scan import Tagger
    from tagger.library.summary import ScanSummary

    config = with_scheduler(ctx.config(), scheduler)
    roots = list(paths) or list(config.folders)
    if not roots:
        raise ConfigError(f"{config.source}: key 'folders' is empty and no PATH was given: nothing to scan")
    summary = ScanSummary()
    with index_lock(config.index, "scan"), stop_signals() as stopped:
        classifier = Classifier.from_settings(config.model_choice())
        try:
            with Index.open(config.index) as store, progress() as on_progress:
                tagger = Tagger(config, classifier, store, scan_backend(config.cluster))
                try:
                    tagger.scan(roots, on_progress, cancelled=lambda: bool(stopped), summary=summary, prune=prune)
                finally:
                    tagger.close()
                    summary.checked = classifier.checked  # this process's classifier: this scan's close calls
            backfill_after_scan(config, classifier, stopped)  # an index from before embeddings
        except DiskError:
            if summary.files:  # what was done before the disk filled up
                print_summary(summary, classifier.name, config)
            raise
    print_summary(summary, classifier.name, config)
    if stopped:
        left = summary.files - summary.tagged - summary.unchanged - summary.failed
        click.echo(f"stopped by {signal.Signals(stopped[0]).name}: {left} images found and the folders not reached "
                   "yet left for the next scan", err=True)
        if stopped[0] == signal.SIGINT:
            sys.exit(EXIT_INTERRUPTED)


def print_summary(summary: ScanSummary, model: str, config: Config) -> None:
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


@click.command()
@click.option("--all", "everything", is_flag=True,
              help="Rebuild every image's keywords, not only the changed, and bring every sidecar up to date "
                   "(an XMP file another tool rewrote without tagger's keywords too); only those that differ are written.")
@pass_ctx
def retag(ctx: Context, everything: bool) -> None:
    """Re-apply the rules, min_score and corrections to the stored raw tags (no model run).

    Only images with a raw tag that a changed rule or threshold touches are looked at, and
    only those whose keywords changed get their sidecars (JSON and XMP) rewritten.
    """
    from tagger.index import Index
    from tagger.library.keywording import Retagger

    config = ctx.config(require_folders=False)
    with Index.open(config.index) as store, progress() as on_progress:
        summary = Retagger(config, store).retag(everything=everything, on_progress=on_progress)
    click.echo(
        f"{summary.contents} images looked at: keywords changed for {summary.changed}, "
        f"{summary.sidecars} files' sidecars rewritten; {summary.seconds:.1f} s (no model run)"
    )


@click.group()
def tag() -> None:
    """Correct an image's keywords; corrections survive re-tags, moves and a change of model."""


def _correction_command(action: Action, summary: str) -> None:
    """`tagger tag add` and `tagger tag remove`: the same arguments, the opposite correction."""

    @tag.command(action, help=summary)
    @click.argument("image", type=click.Path(path_type=Path))
    @click.argument("keywords", nargs=-1, required=True)
    @pass_ctx
    def correct(ctx: Context, image: Path, keywords: tuple[str, ...]) -> None:
        from tagger.index import Index
        from tagger.library.corrections import correct as correct_image
        from tagger.library.keywording import Retagger

        config = ctx.config(require_folders=False)
        with Index.open(config.index) as store:
            show_keywords(store, correct_image(Retagger(config, store), image.resolve(), keywords, action))


_correction_command("add", "Add KEYWORDS to IMAGE (and every copy of it) as your own.")


_correction_command("remove", "Remove KEYWORDS from IMAGE (and every copy of it), whatever the rules say later.")


@tag.command("show")
@click.argument("image", type=click.Path(path_type=Path))
@pass_ctx
def tag_show(ctx: Context, image: Path) -> None:
    """Show IMAGE's keywords: the model's (after rules) and your own."""
    from tagger.index import Index

    config = ctx.config(require_folders=False)
    with Index.open(config.index, readonly=True) as store:
        record = store.file_record(str(image.resolve()))
        if record is None or record.sha256 is None:
            raise TaggerError(f"{image}: not a tagged image in the index (run `tagger scan` first)")
        show_keywords(store, record.sha256)


def show_keywords(store: Any, sha256: str) -> None:
    """One line per keyword, the model's and the user's; then the keywords the user removed."""
    for row in store.keywords(sha256):
        click.echo(f"{row.source:5}  {row.score:6.1%}  {row.path}  ({row.path_zh})")
    for correction in store.corrections(sha256):
        if correction.action == "remove":
            click.echo(f"removed by user: {correction.keyword}")


@click.command()
@pass_ctx
def failures(ctx: Context) -> None:
    """List files that could not be tagged, with the reason."""
    from tagger.index import Index

    config = ctx.config(require_folders=False)
    with Index.open(config.index, readonly=True) as store:
        for f in store.failures():
            click.echo(f"{shown(f.path)}: {f.error}")


def backfill_after_scan(config: Config, classifier: Any, stopped: list[int]) -> None:
    """Embeddings an older index lacks, computed once after a scan that was not stopped, with a progress bar."""
    from tagger.index import Index
    from tagger.vectors.embeddings import backfill

    if stopped:
        return
    with Index.open(config.index) as store, progress() as on_progress:
        result = backfill(config, classifier, store, on_progress=on_progress, cancelled=lambda: bool(stopped))
    if result.missing:
        click.echo(
            f"embeddings: {result.computed} computed for images indexed before them"
            f"{f', {result.skipped} skipped (file changed or unreadable)' if result.skipped else ''}"
        )
