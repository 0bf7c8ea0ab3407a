"""Reading a user's YAML file (config or rules): every failure is a ConfigError naming the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tagger.errors import ConfigError


def read_yaml(source: Path, kind: str, missing_hint: str) -> Any:
    """The parsed file; `kind` ("config", "rules") and `missing_hint` go into the messages."""
    return parse_yaml(read_text(source, kind, missing_hint), source)


def read_text(source: Path, kind: str, missing_hint: str) -> str:
    try:
        return source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: {kind} file not found ({missing_hint})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read {kind} file: {exc}") from None


def parse_yaml(text: str, source: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
