"""The commands built on embeddings: embed, similar, duplicates, learn, learned.

Registered on `tagger.cli`'s group, whose `invoke` turns errors into messages and exit codes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tagger.cli import _Context, _progress, cli, pass_ctx
from tagger.errors import StoreError, TaggerError
from tagger.fileio import json_text, shown


def _indexed_sha(store: object, image: Path) -> str:
    """The content of IMAGE, which must be a tagged file in the index."""
    record = store.file_record(str(image.resolve()))  # type: ignore[attr-defined]
    if record is None or record.sha256 is None or record.status != "tagged":
        raise TaggerError(f"{shown(image)}: not a tagged image in the index (run `tagger scan` first)")
    return str(record.sha256)


def _write_paths(paths: list[str]) -> None:
    out = sys.stdout.buffer
    out.write(b"".join(os.fsencode(p) + b"\n" for p in paths))
    out.flush()


@cli.command()
@pass_ctx
def embed(ctx: _Context) -> None:
    """Compute the embeddings that images indexed before them lack (`tagger scan` does it too)."""
    from tagger.classify import Classifier
    from tagger.embeddings import backfill
    from tagger.indexlock import index_lock
    from tagger.store import Store

    config = ctx.config(require_folders=False)
    if not config.index.exists():
        raise StoreError(f"{config.index}: no index yet (run `tagger scan` first)")
    with index_lock(config.index, "scan"):
        classifier = Classifier.from_config(config)
        with Store.open(config.index) as store, _progress() as on_progress:
            result = backfill(config, classifier, store, on_progress=on_progress)
    click.echo(
        f"embeddings: {result.missing} missing, {result.computed} computed, {result.skipped} skipped "
        "(file changed or unreadable: the next scan tags it)"
    )


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most this many.")
@click.option("--format", "fmt", type=click.Choice(["paths", "json"]), default="paths", show_default=True,
              help="paths: one per line; json: path, sha256 and similarity of each.")
@pass_ctx
def similar(ctx: _Context, image: Path, limit: int, fmt: str) -> None:
    """List the images most like IMAGE (an indexed file), best first; its own copies are left out."""
    from tagger.similar import similar_to
    from tagger.store import Store
    from tagger.vectorindex import VectorRows

    config = ctx.config(require_folders=False)
    with Store.open(config.index, readonly=True) as store:
        matches = similar_to(store, _indexed_sha(store, image), limit)
        paths = VectorRows(store.conn).paths_of([m.sha256 for m in matches])
    found = [(p, m) for m in matches for p in paths.get(m.sha256, [])][:limit]
    if fmt == "json":
        click.echo(json_text([{"path": p, "sha256": m.sha256, "score": round(m.score, 4)} for p, m in found], indent=2))
    else:
        _write_paths([p for p, _ in found])


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a block per group, the largest copy marked *; json: a list of groups, each a list of "
              "paths, the largest copy first.")
@pass_ctx
def duplicates(ctx: _Context, fmt: str) -> None:
    """List groups of copies of the same picture: resized, recompressed, slightly cropped, re-exported.

    Other shots of the same scene are not copies. In each group the largest copy (pixels,
    then bytes) comes first.
    """
    from tagger.duplicates import find_duplicates
    from tagger.store import Store

    config = ctx.config(require_folders=False)
    with Store.open(config.index, readonly=True) as store:
        found = find_duplicates(store)
    if fmt == "json":
        click.echo(json_text([[c.path for c in group] for group in found], indent=2))
        return
    for n, group in enumerate(found):
        if n:
            click.echo("")
        for i, c in enumerate(group):
            mark = "*" if i == 0 else " "
            click.echo(f"{mark} {shown(c.path)}  ({c.pixels / 1e6:.1f} MP, {c.size / 1e6:.2f} MB)")
    click.echo(f"{len(found)} groups of copies ({sum(len(g) for g in found)} files); * marks the largest copy", err=True)
