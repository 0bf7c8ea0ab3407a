"""Reading a user's YAML file (config or rules): every failure is a ConfigError naming the file.

PyYAML keeps the last of two equal keys without a word, and its syntax errors span four lines
naming `<unicode string>`: here a repeated key is refused, and every error is one line with the
real file name and line number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tagger.errors import ConfigError
from tagger.fileio import MB, read_small

_MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_YAML_BYTES = 8 * MB  # the shipped rules are 17 kB


# libyaml's parser when PyYAML was built with it: the shipped rules parse in 6 ms instead of 45,
# a third of a scan's start. The constructors (and so every check) are the same Python code.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses a mapping key given twice."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue  # `<<: *defaults` may be overridden by the keys written after it
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key: the constructor below says what is wrong with it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(source: Path, kind: str, missing_hint: str) -> Any:
    """The parsed file; `kind` ("config", "rules") and `missing_hint` go into the messages."""
    return parse_yaml(read_text(source, kind, missing_hint), source)


def read_text(source: Path, kind: str, missing_hint: str) -> str:
    try:
        return read_small(source, MAX_YAML_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: {kind} file not found ({missing_hint})") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read {kind} file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: cannot read {kind} file: {exc}") from None


def parse_yaml(text: str, source: Path) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # a few hundred nested brackets exhaust the constructor's recursion
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None


def _one_line(exc: yaml.MarkedYAMLError) -> str:
    """"line 3, column 5: expected ..., but found ... (in the flow sequence that starts on line 1)"."""
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = exc.problem or exc.context or "malformed"
    context = ""
    if exc.context and exc.problem and exc.context_mark is not None:
        context = f" ({exc.context} that starts on line {exc.context_mark.line + 1})"
    return where + " ".join(f"{problem}{context}".split())
