"""`tagger index check` and `tagger index rebuild`: the index's health, and a new one from the sidecars."""
from __future__ import annotations

import sys

import click

from tagger.cli.context import EXIT_FAILURE, Context, pass_ctx, progress
from tagger.fileio import shown

SHOWN_UNRESTORED = 20  # files listed by name at the end of a rebuild; the rest counted


@click.group("index")
def index() -> None:
    """Check the index, or rebuild it from the sidecars (no model run)."""


@index.command()
@click.option("--full", is_flag=True, help="PRAGMA integrity_check (also compares every index with its table) "
              "instead of quick_check: slower.")
@pass_ctx
def check(ctx: Context, full: bool) -> None:
    """Run SQLite's checks (quick_check, foreign_key_check) and the identity checks (the id
    file beside the index, the owner of its -wal file); nothing is written.

    Exit 0 when healthy (an earlier note of damage is then removed), 1 when not, with what to do.
    """
    from tagger.index.health import check_index
    from tagger.index.identity import (
        ADVICE,
        clear_damage,
        damage_noted,
        damage_path,
        note_damage,
    )

    config = ctx.config(require_folders=False)
    noted = damage_noted(config.index)
    found = check_index(config.index, full=full)
    for line in found.notes:
        click.echo(f"ok: {line}")
    for line in found.problems:
        click.echo(f"problem: {line}")
    if found.healthy:
        if noted is not None and clear_damage(config.index):
            click.echo(f"ok: the note of damage ({noted}) no longer holds: {damage_path(config.index).name} removed")
        click.echo(f"{config.index}: healthy")
        return
    if found.damage is not None:  # every command and the viewer say it from now on
        note_damage(config.index, found.damage)
    click.echo(f"{config.index}: not healthy: {ADVICE.replace('run `tagger index check`, ', '')}")
    sys.exit(EXIT_FAILURE)


@index.command()
@pass_ctx
def rebuild(ctx: Context) -> None:
    """Make the index again from the JSON sidecars of the configured folders, without a model run.

    Every image whose sidecar still matches it (same size and content hash: each file is read)
    gets its tags, keywords and own keywords back; removals, embeddings and learned tags are
    copied from the old index as far as it can be read. The old index is moved aside as
    INDEX.damaged-YYYYmmdd-HHMMSS, never deleted. Files without a usable sidecar are listed:
    `tagger scan` classifies them again. Refused while `tagger run` or a scan keeps the index.
    """
    from tagger.library.lock import index_lock
    from tagger.library.rebuild import rebuild as rebuild_index

    config = ctx.config()
    with index_lock(config.index, "scan"), progress() as on_progress:
        done = rebuild_index(config, on_progress)
    click.echo(
        f"{done.restored} files ({done.contents} distinct images) restored from their sidecars; "
        f"{done.seconds:.1f} s (no model run)"
    )
    for table, (rows, problem) in done.salvaged.items():
        if problem is None:
            click.echo(f"{table}: {rows} rows kept from the old index")
        else:
            click.echo(f"{table}: {rows} rows kept from the old index, the rest lost ({problem})")
    if not done.salvaged:
        click.echo("no old index: corrections that removed a keyword, embeddings and learned tags start empty")
    if done.moved_aside is not None:
        click.echo(f"the old index is kept as {done.moved_aside}")
    for path, why in done.unrestored[:SHOWN_UNRESTORED]:
        click.echo(f"not restored: {shown(path)}: {why}", err=True)
    if len(done.unrestored) > SHOWN_UNRESTORED:
        click.echo(f"not restored: ... and {len(done.unrestored) - SHOWN_UNRESTORED} more", err=True)
    click.echo(f"{len(done.unrestored)} files need `tagger scan` to be classified again")
