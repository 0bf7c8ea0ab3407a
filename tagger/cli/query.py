"""Reading the index: query and stats."""
from __future__ import annotations

import csv
import logging
import os
import sys

import click

from tagger.cli.context import Context, pass_ctx
from tagger.errors import StoreError
from tagger.fileio import json_text

log = logging.getLogger("tagger")


@click.command()
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
    ctx: Context, text: str, tags: tuple[str, ...], min_score: float | None, fmt: str, nul: bool, limit: int | None
) -> None:
    """List tagged files matching QUERY, best match first.

    \b
    QUERY words (all must match; ^ negates tag:, folder: and type:):
      dog  tag:"sports car"  猫     a keyword, category, alias, label, WordNet id or class number
      class:tabby  class:281        a raw guess of the model (ImageNet label, WordNet id, number)
      score:0.6..  score:..0.3      score of the matching keywords
      folder:2024  folder:/srv/x    a folder name in the path, or an absolute folder
      type:raw  type:video  type:photo   camera RAW files, video clips, or every other image
      duration:>60  duration:1m..5m      a clip's length (seconds, or with s, m, h)
      added:-1w..  date:2023..2024-06   first seen by tagger / file modified
    Example: tagger query 'tag:dog score:0.6.. ^tag:cat folder:2024 added:-1w..'
    """
    import dataclasses
    import io

    from tagger.index import Index
    from tagger.tags.querylang import QueryError, parse
    from tagger.tags.searchterms import UnknownTag, resolve_query

    config = ctx.config(require_folders=False)
    rules = config.rule_set
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


@click.command()
@pass_ctx
def stats(ctx: Context) -> None:
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
