"""Settings have one source: the dataclass fields of lvmbench.settings. The schema Snakemake
validates with and config/README.md must state the same defaults and the same ranges,
key by key; the dataclasses refuse what the ranges exclude, NaN included."""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import pytest
import yaml

from lvmbench.errors import LvmbenchError
from lvmbench.settings import (
    LABEL,
    AISSettings,
    AmortizeSettings,
    Cell,
    EvalSettings,
    GradvarSettings,
    TrainSettings,
    WorkflowSettings,
    build_settings,
    defaults,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
README = (ROOT / "config" / "README.md").read_text()
RANGE_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "pattern", "minLength")


def schema_block(name: str) -> dict:
    """The schema's properties for a settings block."""
    if name == "workflow":
        return {f.name: SCHEMA["properties"][f.name] for f in fields(WorkflowSettings)}
    if name in ("amortization", "ais"):
        return {k: v for k, v in SCHEMA["properties"][name]["properties"].items() if k != "match"}
    return SCHEMA["$defs"][name]["properties"]


BLOCKS = {"train": TrainSettings, "eval": EvalSettings, "gradvar": GradvarSettings,
          "amortization": AmortizeSettings, "ais": AISSettings, "workflow": WorkflowSettings}


def _base(hint):
    """(inner type, nullable, is_list) of a field type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    nullable = type(None) in args
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], nullable, True
    return hint, nullable, False


def readme_rows(block: str) -> dict[str, tuple[str, str]]:
    """`key` -> (type text, default text) from the table of a block's section of
    config/README.md ("## `train`", ...; the workflow keys are in "## Top-level keys")."""
    heading = "## Top-level keys" if block == "workflow" else f"## `{block}`"
    assert heading in README, f"config/README.md has no section {heading!r}"
    section = README.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[A-Za-z_][A-Za-z0-9_]*`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def readme_type(hint, meta: dict) -> str | None:
    """How config/README.md writes a field's type and range (None: free text, for patterns)."""
    inner, nullable, is_list = _base(hint)
    if "pattern" in meta:
        return None
    if "enum" in meta:
        names = [f"`{str(v).lower() if isinstance(v, bool) else v}`" for v in meta["enum"]] + \
            (["null"] if nullable else [])
        return ", ".join(names[:-1]) + " or " + names[-1]
    word = {int: "integer", float: "number", str: "string"}[inner]
    bounds = []
    if "minimum" in meta and ("maximum" in meta or "exclusiveMaximum" in meta):
        close = "]" if "maximum" in meta else ")"
        bounds.append(f"in [{meta['minimum']}, {meta.get('maximum', meta.get('exclusiveMaximum'))}{close}")
    else:
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in meta:
                bounds.append(f"{op} {meta[key]}")
    text = " ".join([word, *bounds])
    if is_list:
        text = "list of " + ("names" if inner is str else f"integers {' '.join(bounds)}".strip())
    return text + (" or null" if nullable else "")


def _parse_default(text: str):
    value = yaml.safe_load(text.strip("`"))
    return float(value) if isinstance(value, str) and re.fullmatch(r"[-+0-9.e]+", value) else value


@pytest.mark.parametrize("block", BLOCKS)
def test_schema_states_the_dataclass_defaults_and_ranges(block):
    cls, props = BLOCKS[block], schema_block(block)
    assert set(props) == {f.name for f in fields(cls)}, block
    for f in fields(cls):
        spec = props[f.name]
        assert spec.get("description"), f"{block}.{f.name} has no description"
        assert spec.get("default") == defaults(cls)[f.name], f"{block}.{f.name} default"
        ranges = {k: spec.get("items", spec).get(k) if k != "enum" else spec.get(k) for k in RANGE_KEYS}
        ranges = {k: v for k, v in ranges.items() if v is not None}
        if "enum" in ranges:
            ranges["enum"] = [v for v in ranges["enum"] if v is not None]  # null listed for nullable fields
        expected = {k: list(v) if isinstance(v, tuple) else v for k, v in f.metadata.items()}
        assert ranges == expected, f"{block}.{f.name} range"


@pytest.mark.parametrize("block", BLOCKS)
def test_config_readme_states_the_dataclass_defaults_and_ranges(block):
    cls, rows = BLOCKS[block], readme_rows(block)
    hints = get_type_hints(cls)
    for f in fields(cls):
        assert f.name in rows, f"config/README.md has no row for {block}.{f.name}"
        type_text, default_text = rows[f.name]
        assert _parse_default(default_text) == defaults(cls)[f.name], f"{block}.{f.name} default: {default_text}"
        expected = readme_type(hints[f.name], f.metadata)
        if expected is not None:
            assert type_text == expected, f"{block}.{f.name}: README says {type_text!r}, the dataclass {expected!r}"


@pytest.mark.parametrize("cls, values, words", [
    (TrainSettings, {"lr": math.nan}, ["lr", "finite"]),
    (TrainSettings, {"lr": math.inf}, ["lr", "finite"]),
    (TrainSettings, {"adam_beta1": 1}, ["adam_beta1", "< 1"]),
    (TrainSettings, {"steps": 0}, ["steps", ">= 1"]),
    (TrainSettings, {"steps": 2.5}, ["steps", "expected int"]),
    (TrainSettings, {"schedule": "linear"}, ["schedule", "constant"]),
    (TrainSettings, [1], ["block", "mapping"]),
    (EvalSettings, {"ordering_threshold": math.nan}, ["ordering_threshold", "finite"]),
    (EvalSettings, {"k_grid": 5}, ["k_grid", "list"]),
    (EvalSettings, {"K_eval": 10, "k_grid": [3]}, ["k_grid", "divisor"]),
    (GradvarSettings, {"draws": 1}, ["draws", ">= 2"]),
    (AmortizeSettings, {"steps": 0}, ["steps", ">= 1"]),
    (AmortizeSettings, {"objective": "piwae"}, ["objective", "elbo"]),
    (AISSettings, {"target_accept": 1.0}, ["target_accept", "< 1"]),
    (AISSettings, {"schedule": "linear"}, ["schedule", "sigmoid"]),
    (GradvarSettings, {"at": "end"}, ["at", "optimum"]),
    (WorkflowSettings, {"device": "tpu"}, ["device", "tpu"]),
    (WorkflowSettings, {"data_dir": ""}, ["data_dir", "empty"]),
    (WorkflowSettings, {"results": ""}, ["results", "empty"]),
])
def test_settings_refuse_values_outside_their_range(cls, values, words):
    with pytest.raises(LvmbenchError) as err:
        build_settings(cls, values, "block")
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_defaults_build_and_round_trip():
    for cls in BLOCKS.values():
        assert build_settings(cls, {}, "x") == cls()
        assert build_settings(cls, cls().to_dict(), "x") == cls()
    cell = Cell.from_dict({"experiment": "e", "dataset": "gmm2d", "model": "gmm", "objective": "iwae", "K": 2,
                           "estimator": "score", "seed": 0})
    assert Cell.from_dict(cell.to_dict()) == cell
    with pytest.raises(LvmbenchError, match="unknown key"):
        Cell.from_dict({**cell.to_dict(), "eval": {}})
    with pytest.raises(LvmbenchError, match=r"missing key\(s\) \['seed'\]"):
        Cell.from_dict({k: v for k, v in cell.to_dict().items() if k != "seed"})


def test_schema_names_are_the_labels_of_settings():
    """Experiment names and labels become path components: the schema's pattern is LABEL,
    the pattern lvmbench.settings.Cell checks."""
    assert SCHEMA["$defs"]["label"]["pattern"] == LABEL == SCHEMA["$defs"]["names"]["items"]["pattern"]
