"""Reading config files and JSON text: one clear line for every way they can be malformed.

YAML and JSON silently keep the last of two equal keys in one mapping, so that a second
experiment of the same name replaces the first and ``{steps: 20, steps: 5}`` trains 5
steps. Here a repeated key is refused, naming both lines; so are files that are not
UTF-8, directories, missing files and documents that are not a mapping. ``lvmbench plan``,
``lvmbench aggregate --published`` and the workflow (which re-reads the config files
Snakemake loaded) all read configs through :func:`read_config`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lvmbench.errors import LvmbenchError

_MERGE = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a key written twice in one mapping (keys merged in with
    ``<<: *anchor`` may be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own message below
                break
            line = key_node.start_mark.line + 1
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {first} and {line})",
                    key_node.start_mark)
            lines[key] = line
        return super().construct_mapping(node, deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and where it is."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and "appears twice" in problem:
        return problem
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


def parse_yaml(text: str, where: str) -> Any:
    """YAML text (JSON included) with repeated keys refused; ``where`` names it in messages."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise LvmbenchError(f"{where} is not valid YAML: {_yaml_problem(err)}") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice in one mapping")
        seen[key] = value
    return seen


def parse_json(text: str, what: str) -> Any:
    """JSON text with repeated keys refused; ``what`` names it in messages (e.g. ``--cell``)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise LvmbenchError(f"{what} is not JSON text: {err}") from None


def read_text(path: str | Path, what: str = "config file") -> str:
    """A UTF-8 text file, or one line saying why it cannot be read."""
    p = Path(path)
    if not p.exists():
        raise LvmbenchError(f"{what} {p} does not exist")
    if p.is_dir():
        raise LvmbenchError(f"{what} {p} is a directory, not a file")
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = p.read_bytes()[:err.start].count(b"\n") + 1
        raise LvmbenchError(f"{what} {p} is not UTF-8 text (byte {err.object[err.start]:#04x} on line {line})") \
            from None
    except OSError as err:
        raise LvmbenchError(f"{what} {p} cannot be read: {err.strerror}") from None


def read_config(path: str | Path) -> dict:
    """A YAML or JSON config file as a mapping (module docstring)."""
    data = parse_yaml(read_text(path), f"config file {path}")
    if not isinstance(data, dict):
        raise LvmbenchError(f"config file {path} is empty or not a mapping")
    return data


def read_config_or_json(text: str) -> dict:
    """A config given as a file name or as JSON text (what ``lvmbench plan`` takes)."""
    return parse_json(text, "the config") if text.lstrip().startswith("{") else read_config(text)
