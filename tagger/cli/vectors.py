"""The commands built on embeddings: embed, similar, duplicates, learn, learned, unlearn.

Given to `tagger.cli`'s group (COMMANDS), whose `invoke` turns errors into messages and exit codes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tagger.cli.context import Context, pass_ctx, progress
from tagger.errors import StoreError, TaggerError
from tagger.fileio import json_text, shown

if TYPE_CHECKING:
    from tagger.index import Index



def _indexed_sha(store: Index, image: Path) -> str:
    """The content of IMAGE, which must be a tagged file in the index."""
    record = store.file_record(str(image.resolve()))
    if record is None or record.sha256 is None or record.status != "tagged":
        raise TaggerError(f"{shown(image)}: not a tagged image in the index (run `tagger scan` first)")
    return str(record.sha256)


def counted(n: int, noun: str) -> str:
    """"1 image", "2 images": messages read as sentences."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _write_paths(paths: list[str]) -> None:
    out = sys.stdout.buffer
    out.write(b"".join(os.fsencode(p) + b"\n" for p in paths))
    out.flush()


@click.command()
@pass_ctx
def embed(ctx: Context) -> None:
    """Compute the embeddings that images indexed before them lack (`tagger scan` does it too)."""
    from tagger.engine.classify import Classifier
    from tagger.index import Index
    from tagger.library.lock import index_lock
    from tagger.vectors.embeddings import backfill

    config = ctx.config(require_folders=False)
    if not config.index.exists():
        raise StoreError(f"{config.index}: no index yet (run `tagger scan` first)")
    with index_lock(config.index, "scan"):
        classifier = Classifier.from_settings(config.model_choice())
        with Index.open(config.index) as store, progress() as on_progress:
            result = backfill(config, classifier, store, on_progress=on_progress)
    click.echo(
        f"embeddings: {result.missing} missing, {result.computed} computed, {result.skipped} skipped "
        "(file changed or unreadable: the next scan tags it)"
    )


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most this many.")
@click.option("--format", "fmt", type=click.Choice(["paths", "json"]), default="paths", show_default=True,
              help="paths: one per line; json: path, sha256, similarity and copies (files holding it) of each.")
@pass_ctx
def similar(ctx: Context, image: Path, limit: int, fmt: str) -> None:
    """List the images most like IMAGE (an indexed file), best first.

    Each picture once, by its first file: its copies (files with the same bytes) are counted,
    not listed. IMAGE's own copies are left out.
    """
    from tagger.index import Index
    from tagger.vectors.similar import similar_to

    config = ctx.config(require_folders=False)
    with Index.open(config.index, readonly=True) as store:
        matches = similar_to(store, _indexed_sha(store, image), limit)
        first = store.vectors.first_paths([m.sha256 for m in matches])
    found = [(*first[m.sha256], m) for m in matches if m.sha256 in first]
    if fmt == "json":
        click.echo(json_text([{"path": p, "sha256": m.sha256, "score": round(m.score, 4), "copies": n}
                              for p, n, m in found], indent=2))
        return
    _write_paths([p for p, _, _ in found])
    copied, extra = sum(1 for _, n, _ in found if n > 1), sum(n - 1 for _, n, _ in found)
    if extra:
        click.echo(f"not listed: {extra} more {'file' if extra == 1 else 'files'} with the same bytes as "
                   f"{counted(copied, 'image')} above (--format json counts each one's copies)", err=True)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a block per group, the largest copy marked *; json: a list of groups, each a list of "
              "paths, the largest copy first.")
@pass_ctx
def duplicates(ctx: Context, fmt: str) -> None:
    """List groups of copies of the same picture: resized, recompressed, slightly cropped, re-exported.

    Other shots of the same scene are not copies. In each group the largest copy (pixels,
    then bytes) comes first.
    """
    from tagger.index import Index
    from tagger.vectors.duplicates import find_duplicates

    config = ctx.config(require_folders=False)
    with Index.open(config.index, readonly=True) as store:
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
    files = sum(len(g) for g in found)
    click.echo(f"{len(found)} groups of copies ({files} files); * marks the largest copy", err=True)


def _threshold_option(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    """--threshold as a usage error when out of range (NaN included), before the index is opened."""
    from tagger.vectors.learned import LearnError, check_threshold

    try:
        return None if value is None else check_threshold(value)
    except LearnError:
        raise click.BadParameter(f"{value} is not a probability between 0 and 1 (exclusive), such as 0.7") from None


@click.command()
@click.argument("name")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--not", "rejected", multiple=True, type=click.Path(path_type=Path),
              help="An image that is NOT this tag; repeat for several.")
@click.option("--show", type=click.IntRange(0, 1000), default=10, show_default=True,
              help="How many proposals (matches that are not examples yet) to list.")
@click.option("--threshold", type=float, default=None, callback=_threshold_option, metavar="T",
              help="The probability (0 < T < 1) from which an image gets NAME, kept for later runs "
              "[default: the tag's own, 0.5 for a new one]. Alone: changes an existing tag's.")
@pass_ctx
def learn(
    ctx: Context, name: str, images: tuple[Path, ...], rejected: tuple[Path, ...], show: int, threshold: float | None
) -> None:
    """Teach the keyword NAME from example IMAGES (and counter-examples given with --not).

    Examples add up over several runs (`tagger learn mycat more.jpg` adds one; an image
    given with --not after being an example moves side). Every image of the library is
    scored at once; matches get NAME as a keyword (query: tag:NAME), in the index and the
    sidecars, and new images get it as they are tagged. `--threshold 0.8` alone makes an
    existing tag stricter (lower: looser), re-applied to the whole library.
    """
    from tagger.index import Index
    from tagger.library.keywording import Retagger
    from tagger.vectors.learned import learn as teach
    from tagger.vectors.learned import set_threshold

    config = ctx.config(require_folders=False)
    if not images and not rejected and threshold is None:
        raise click.UsageError("give example images (and/or --not IMAGE counter-examples, or --threshold T)")
    with Index.open(config.index) as store:
        positive = [_indexed_sha(store, p) for p in images]
        negative = [_indexed_sha(store, p) for p in rejected]
        if positive or negative or threshold is None:
            result = teach(store, name, positive, negative, threshold)
        else:  # a threshold alone: the tag must exist already
            result = set_threshold(store, name, threshold)
        Retagger(config, store).rekeyword(result.changed, "the keywords of a learned tag")
        paths = _paths_of(store, [sha for sha, _ in result.proposals[:show]])
    tag = result.tag
    precision = "n/a (not enough examples yet to estimate)" if tag.precision is None else f"{tag.precision:.0%}"
    click.echo(
        f"learned {tag.name!r} from {counted(tag.positives, 'example')} and "
        f"{counted(tag.negatives, 'counter-example')}: {counted(len(result.matches), 'image')} "
        f"{'matches' if len(result.matches) == 1 else 'match'} at threshold {tag.threshold:g}; "
        f"cross-validated precision {precision}; "
        f"trained in {result.train_seconds:.2f} s, applied in {result.apply_seconds:.2f} s"
    )
    if show and result.proposals:
        click.echo("proposals (accept with `tagger learn NAME IMAGE`, reject with `--not IMAGE`):")
        for sha, score in result.proposals[:show]:
            for path in paths.get(sha, [])[:1]:
                click.echo(f"  {score:6.1%}  {shown(path)}")


def _paths_of(store: Index, shas: list[str]) -> dict[str, list[str]]:

    return store.vectors.paths_of(shas)


@click.command()
@pass_ctx
def learned(ctx: Context) -> None:
    """List the learned tags: examples, counter-examples, matches, threshold, cross-validated precision."""
    from tagger.index import Index

    config = ctx.config(require_folders=False)
    with Index.open(config.index, readonly=True) as store:
        rows = store.vectors
        tags = rows.learned()
        counts = {t.name: len(rows.matches_of(t.name)) for t in tags}
    if not tags:
        click.echo("no learned tags yet: tagger learn NAME IMAGE... [--not IMAGE...]")
        return
    click.echo(f"{'tag':20} {'examples':>8} {'not':>5} {'matches':>8} {'threshold':>9} {'precision':>9}  model")
    for t in tags:
        precision = "n/a" if t.precision is None else f"{t.precision:.0%}"
        click.echo(
            f"{t.name:20} {t.positives:8d} {t.negatives:5d} {counts[t.name]:8d} {t.threshold:9.2f} {precision:>9}  {t.model}"
        )


@click.command()
@click.argument("name")
@pass_ctx
def unlearn(ctx: Context, name: str) -> None:
    """Forget the learned tag NAME: its examples, its model and its matches.

    The keyword NAME (learned/NAME) leaves every image it was on, in the index and the sidecars.
    A keyword NAME you added yourself (`tagger tag add`) stays.
    """
    from tagger.index import Index
    from tagger.library.keywording import Retagger
    from tagger.vectors.learned import unlearn as forget

    config = ctx.config(require_folders=False)
    with Index.open(config.index) as store:
        matched = forget(store, name)
        Retagger(config, store).rekeyword(matched, "the keywords of a learned tag")
    click.echo(f"forgot the learned tag {name.strip()!r}: its keyword left {counted(len(matched), 'image')}")


COMMANDS = [embed, similar, duplicates, learn, learned, unlearn]
