"""The `tagger` command. The only place where errors become messages and exit codes.

One module per command group, over one shared context (tagger.cli.context); the list of
commands is assembled here.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Any

import click

from tagger import __version__
from tagger.cli import index, model, query, scan, service, vectors, weights
from tagger.cli.context import EXIT_FAILURE, EXIT_USAGE, Context
from tagger.daemon.systemd import JournalFormatter, under_journal
from tagger.errors import ConfigError, TaggerError

COMMANDS: list[click.Command] = [
    scan.scan, service.run, service.worker, service.health, service.status, query.query, scan.retag, scan.tag,
    query.stats, weights.weights, service.serve, scan.failures, *model.COMMANDS, *vectors.COMMANDS, index.index,
]


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
            raise _Failure(str(exc) or type(exc).__name__) from None
        except sqlite3.Error as exc:  # met in the index outside a transaction: damage, a disk, a lock
            raise _Failure(_index_failure(ctx, exc)) from None


def _index_failure(ctx: click.Context, exc: sqlite3.Error) -> str:
    """One line naming the index and what to do (tagger.index.store_failure)."""
    from tagger.index import store_failure

    shared = ctx.find_object(Context)
    try:
        path = None if shared is None else shared.config(require_folders=False).index
    except TaggerError:
        path = None
    return f"the index: {exc}" if path is None else str(store_failure(path, exc))


@click.group(cls=_TaggerGroup, commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
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
    handler.addFilter(_never_blank)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("watchdog").setLevel(max(level, logging.WARNING))
    ctx.obj = Context(config_file)


def _never_blank(record: logging.LogRecord) -> bool:
    """A line that would say nothing ("tagger: ERROR: ", an exception without a message) names the
    exception instead."""
    if not record.getMessage().strip():
        record.msg, record.args = type(record.exc_info[1]).__name__ if record.exc_info else "(no message)", ()
    return True


def main() -> None:
    cli(prog_name="tagger")


