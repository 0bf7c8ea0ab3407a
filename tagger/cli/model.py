"""`tagger classify` and `tagger explain`: the model on images named on the command line; nothing is written.

Given to `tagger.cli`'s group (COMMANDS), whose `invoke` turns errors into messages and exit codes.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tagger.cli.context import Context, pass_ctx
from tagger.errors import DecodeError, TaggerError
from tagger.fileio import Folders, is_video_name, json_text, shown

if TYPE_CHECKING:
    from tagger.index.vectors import LearnedTag



@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list instead of text.")
@click.option("--top-k", type=click.IntRange(1, 1000), help="How many tags per image (default: model.top_k).")
@pass_ctx
def classify(ctx: Context, images: tuple[Path, ...], as_json: bool, top_k: int | None) -> None:
    """Print the tags of IMAGES; writes nothing (no sidecar, no index)."""
    from tagger.engine.classify import Classifier
    from tagger.engine.decode import draft_size, open_rgb, preprocess
    from tagger.engine.video import ClipBudget, clip_or_error, clip_tags

    config = ctx.config(require_folders=False)
    classifier = Classifier.from_settings(config.model_choice())
    k = top_k or config.model.top_k
    results: list[dict[str, Any]] = []
    spec, video = classifier.spec.preprocess, config.video
    for path in images:
        try:
            if is_video_name(path):  # a clip: its keyframes, as a scan samples them
                budget = ClipBudget(video.frames, video.max_seconds, config.decode.max_pixels)
                clip = clip_or_error(path, Folders(["/"]), budget, spec)
                if isinstance(clip, DecodeError):
                    raise clip
                tags = clip_tags(classifier.tag_batch(clip.arrays, k), clip.times, k)
            else:
                draft = draft_size(spec, config.decode.draft)
                decoded = open_rgb(path, config.decode.max_pixels, draft, config.decode.max_file_bytes)
                tags = classifier.tag_batch(preprocess(decoded.image, spec)[None], k)[0]
        except DecodeError as exc:
            results.append({"path": str(path), "error": str(exc)})
            if not as_json:
                click.echo(f"{shown(path)}: error: {exc}", err=True)
            continue
        results.append({"path": str(path), "model": classifier.name, "tags": [t.as_dict() for t in tags]})
        if not as_json:
            names = ", ".join(f"{t.label} ({t.label_zh}) {t.score:.1%}" for t in tags)
            click.echo(f"{shown(path)}: {names}")
    if as_json:
        click.echo(json_text(results, indent=2))


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--tag", "term", metavar="LABEL", help="English or Chinese label, class id, or learned/NAME (default: the top guess).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the photo with the heatmap as PNG.")
@click.option("--json", "as_json", is_flag=True, help='Print {"label", "class_id", "score", "map"}: rows over the image.')
@pass_ctx
def explain(ctx: Context, image: Path, term: str | None, out: Path | None, as_json: bool) -> None:
    """Show where in IMAGE the model saw a tag: a class activation map over the photo."""
    from tagger.engine import explain as cam
    from tagger.engine.classify import Classifier
    from tagger.engine.decode import draft_size, open_rgb

    config = ctx.config(require_folders=False)
    classifier = Classifier.from_settings(config.model_choice())
    draft = draft_size(classifier.spec.preprocess, config.decode.draft)  # as a scan decodes
    try:
        decoded = open_rgb(image, config.decode.max_pixels, draft, config.decode.max_file_bytes)
    except DecodeError as exc:
        raise TaggerError(f"{shown(image)}: {exc}") from None
    size = (decoded.width, decoded.height)
    if term is not None and term.strip().startswith(cam.LEARNED_PREFIX):
        name = term.strip().removeprefix(cam.LEARNED_PREFIX)
        tag = next((t for t in _learned_tags(ctx, classifier.name) if t.name == name), None)
        if tag is None:
            raise cam.ExplainError(f"no learned tag {name!r} for {classifier.name} (teach it with `tagger learn`)")
        explanation = cam.explain_learned(cam.look_at(classifier, decoded.image, size), tag.name, tag.weights, tag.bias)
    else:
        explanation = cam.explain(classifier, decoded.image, term, size)
    if out is not None:
        try:
            cam.overlay(explanation, decoded.image).save(out, "PNG")
        except (OSError, ValueError) as exc:
            raise TaggerError(f"{shown(out)}: cannot write the overlay: {exc}") from None
    if as_json:
        click.echo(json_text(explanation.as_dict()))
        return
    e = explanation
    where = f"; overlay written to {shown(out)}" if out is not None else ""
    click.echo(f"{shown(image)}: {e.label} ({e.label_zh}, class {e.class_id}) {e.score:.1%}{where}")


def _learned_tags(ctx: Context, model: str) -> list[LearnedTag]:
    from tagger.index import Index

    with Index.open(ctx.config(require_folders=False).index, readonly=True) as index:
        return index.vectors.learned(model)


COMMANDS = [classify, explain]
