"""`tagger weights`: which models are installed, fetching and preparing them."""
from __future__ import annotations

import logging

import click

from tagger.cli.context import Context, pass_ctx
from tagger.cpu import cpu_info, int8_scheme
from tagger.engine import fastjpeg
from tagger.engine.weights import (
    MODELS,
    candidate_paths,
    fetch,
    find_weights,
    locate,
    verify,
)
from tagger.errors import TaggerError

log = logging.getLogger("tagger")


@click.group(invoke_without_command=True)
@click.pass_context
def weights(ctx: click.Context) -> None:
    """Show which models are installed and where their weights come from."""
    if ctx.invoked_subcommand is not None:
        return
    config = ctx.find_object(Context).config(require_folders=False)  # type: ignore[union-attr]
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
def weights_fetch(ctx: Context, model: str, url: str | None, if_missing: bool, timeout: float) -> None:
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
def weights_prepare(ctx: Context) -> None:
    """Load the configured model once, making its ONNX export (install time: the daemon then never needs PyTorch).

    Run it after installing, and after changing model.name, model.precision or the weights file;
    systemd/install.sh and the Dockerfile do. The export is cached in weights_dir/onnx/.
    """
    from tagger.engine.classify import Classifier

    config = ctx.config(require_folders=False)
    classifier = Classifier.from_settings(config.model_choice())
    if classifier.runtime == "torch" and config.model.runtime != "torch":
        raise TaggerError(
            f"{classifier.name}: no ONNX export could be made (see the warning above), so `tagger run` would need "
            "PyTorch, which the service unit's MemoryDenyWriteExecute=yes refuses"
        )
    click.echo(f"{classifier.name}: ready for `tagger run` ({classifier.runtime}, weights {classifier.weights.path})")
