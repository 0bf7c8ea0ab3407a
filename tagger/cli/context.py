"""What every command shares: the config file it was given, progress bars, stop signals, exit codes."""
from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from tagger.config import Config, load_config

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it (128 + SIGINT)


class Context:
    """The group's options, handed to every command (pass_ctx): the config is read when a command asks."""

    def __init__(self, config_file: str | None) -> None:
        self.config_file = config_file

    def config(self, *, require_folders: bool = True) -> Config:
        return load_config(self.config_file, require_folders=require_folders)


pass_ctx = click.make_pass_decorator(Context)

CLUSTER_HELP = "Classify on the Dask cluster of this scheduler (tcp://HOST:PORT or tls://HOST:PORT); see cluster: in the config."


@contextmanager
def stop_signals() -> Iterator[list[int]]:
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


@contextmanager
def progress() -> Iterator[Any]:
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
