"""Property-based fuzzing of the one config validator (lvmbench.grid.plan).

Configs are generated from workflow/schemas/config.schema.yaml: every train, eval,
gradvar and amortization key with a value drawn from its declared type and range, on two
small experiments. A generated config plans. Each one is then broken by one mutation
that makes it invalid by construction (a wrong type, a number out of its range, NaN or
an infinity, an empty list or mapping, a repeated list entry or YAML key, an odd name,
an unknown key), and `lvmbench plan` must refuse it with one line on stderr, exit
status 2, no traceback and nothing written. A few mutated configs also go through
`snakemake -n`, which must print the same line: both call the same validator.

The mutations are plain functions of a ``choose`` function (pick one of a sequence), so
hypothesis drives them in the property tests and a seeded random.Random in the
Snakemake sample.
"""

from __future__ import annotations

import copy
import math
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pipeline import SNAKEFILE

from lvmbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
BLOCKS = {name: SCHEMA["$defs"][name]["properties"] for name in ("train", "eval", "gradvar")}
BLOCKS["amortization"] = {k: v for k, v in SCHEMA["properties"]["amortization"]["properties"].items()
                          if k != "match"}
EXPERIMENTS = {
    "demo": {"datasets": ["gmm2d"], "models": ["gmm"], "objectives": ["iwae"], "K": [2], "estimators": ["score"],
             "seeds": [0, 1]},
    "toy": {"datasets": ["gaussian_toy"], "models": {"lg": {"model": "linear_gaussian"}}, "objectives": ["iwae"],
            "K": [2], "estimators": ["reparam", "stl"], "dataset_options": {"gaussian_toy": {"n_train": 64,
                                                                                           "n_test": 128}}},
}
ODD_NAMES = ["..", ".", "", "a/b", " x", "-x", ".hidden", "é", "a b", "x" * 200, "a\nb", 5, None]
Choose = Callable[[Sequence], Any]
SETTINGS = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def _types(spec: dict) -> list[str]:
    return spec["type"] if isinstance(spec["type"], list) else [spec["type"]]


def valid_value(spec: dict, choose: Choose) -> Any:
    """A value the schema's ``spec`` allows, small enough for the experiments above."""
    if "enum" in spec:
        return choose(spec["enum"])
    kind = next(t for t in _types(spec) if t != "null")
    if kind == "integer":
        low = spec.get("minimum", 0)
        return choose(range(low, min(low + 20, spec.get("maximum", low + 20) + 1)))
    if kind == "number":
        low = spec.get("minimum", spec.get("exclusiveMinimum", 0))
        high = spec.get("maximum", spec.get("exclusiveMaximum", low + 10))
        return choose([low + (high - low) * f for f in (0.1, 0.25, 0.5, 0.9)])
    return choose([[], ["score"], ["reparam", "score"]])  # gradvar.estimators, the one list of names


def base_config(choose: Choose) -> dict:
    """A valid config: the two experiments and some keys of every block, drawn from the schema."""
    config: dict[str, Any] = {"experiments": copy.deepcopy(EXPERIMENTS)}
    for block, props in BLOCKS.items():
        keys = sorted({choose(sorted(props)) for _ in range(choose(range(4)))} - {"k_grid", "K_eval"})
        values = {k: valid_value(props[k], choose) for k in keys}
        if block == "eval" and choose([True, False]):
            values["K_eval"] = K_eval = choose([1, 4, 12, 60])
            values["k_grid"] = [k for k in (1, 2, 3, 4, 6, 12, 60) if K_eval % k == 0][: choose([1, 2, 3])]
        if block == "amortization":
            values.pop("K_eval", None)
            if choose([True, False]):  # a multiple of the iwae group size, K
                values["K_eval"] = (values.get("K") or 2) * choose([1, 3])
            values["match"] = {"experiment": "toy"}
        if block != "amortization" or choose([True, False]):
            config[block] = values
    if choose([True, False]):
        config["published"] = [{"experiment": "toy", "dataset": "gaussian_toy", "model": "lg", "objective": "iwae",
                                "K": 2, "metric": "nll", "value": 1.5, "tolerance": 0.5, "source": "a paper"}]
    for key in ("results", "device", "threads", "gpu", "data_dir"):
        if choose([True, False]):
            config[key] = valid_value({**SCHEMA["properties"][key], "type": "integer"}, choose) \
                if key in ("threads", "gpu") else choose({"results": ["results", "out/r"], "device": [
                    "cpu", "auto", "cuda:1"], "data_dir": [None, "data"]}[key])
    return config


# ---------------------------------------------------------------------------------------
# mutations: each makes the config invalid by construction
# ---------------------------------------------------------------------------------------
def _leaf(config: dict, choose: Choose) -> tuple[dict, str, dict]:
    """A settings block of ``config`` (created if absent), one of its keys and its schema."""
    block = choose(sorted(BLOCKS))
    target = config.setdefault(block, {"match": {"experiment": "toy"}} if block == "amortization" else {})
    key = choose(sorted(BLOCKS[block]))
    return target, key, BLOCKS[block][key]


def wrong_type(config: dict, choose: Choose) -> None:
    target, key, spec = _leaf(config, choose)
    kinds = _types(spec)
    wrong = {"integer": ["3", 2.5, True, [1], {"a": 1}], "number": ["x", True, [1.0], {"a": 1.0}],
             "string": [1, [], True], "array": [5, "x", {"a": 1}]}[next(t for t in kinds if t != "null")]
    target[key] = choose(wrong + ([] if "null" in kinds else [None]))


def out_of_range(config: dict, choose: Choose) -> None:
    candidates = [(block, key, spec.get("items", spec)) for block, props in BLOCKS.items()
                  for key, spec in props.items() if set(spec.get("items", spec)) & {"minimum", "maximum",
                                                                                   "exclusiveMinimum",
                                                                                   "exclusiveMaximum"}]
    block, key, spec = choose(candidates)
    bad = [*([spec["minimum"] - 1] if "minimum" in spec else []), *([spec["maximum"] + 1] if "maximum" in spec
                                                                    else []),
           *([spec[k] for k in ("exclusiveMinimum", "exclusiveMaximum") if k in spec])]
    value = choose(bad)
    target = config.setdefault(block, {"match": {"experiment": "toy"}} if block == "amortization" else {})
    target[key] = [value] if BLOCKS[block][key].get("type") == "array" else value


def out_of_range_axis(config: dict, choose: Choose) -> None:
    axes = config["experiments"][choose(sorted(EXPERIMENTS))]
    axis, value = choose([("K", 0), ("K", -3), ("seeds", -1), ("seeds", 2 ** 63)])
    axes[axis] = [value]


def non_finite(config: dict, choose: Choose) -> None:
    target, key, _ = _leaf(config, choose)
    target[key] = choose([math.nan, math.inf, -math.inf])


def empty(config: dict, choose: Choose) -> None:
    where = choose(["experiments", "datasets", "models", "objectives", "K", "estimators", "seeds", "match"])
    if where == "experiments":
        config["experiments"] = {}
    elif where == "match":
        config["amortization"] = {**config.get("amortization", {}), "match": {}}
    else:
        config["experiments"][choose(sorted(EXPERIMENTS))][where] = choose([[], {}]) if where in (
            "models", "objectives", "estimators") else []


def repeated_entry(config: dict, choose: Choose) -> None:
    axes = config["experiments"][choose(sorted(EXPERIMENTS))]
    axis = choose(["datasets", "K", "estimators", "seeds"] if isinstance(axes.get("estimators"), list) else
                  ["datasets", "K", "seeds"])
    entries = list(axes.get(axis, [0]))
    axes[axis] = entries + [choose(entries)]


def odd_name(config: dict, choose: Choose) -> None:
    name = choose(ODD_NAMES)
    where = choose(["experiment", "model label", "dataset", "estimator label"])
    experiments = config["experiments"]
    if where == "experiment":
        experiments[name] = experiments.pop(choose(sorted(EXPERIMENTS)))
    elif where == "model label":
        experiments["demo"]["models"] = {name: {"model": "gmm"}}
    elif where == "dataset":
        experiments["demo"]["datasets"] = [name]
    else:
        experiments["toy"]["estimators"] = {name: {"estimator": "reparam"}}


def unknown_key(config: dict, choose: Choose) -> None:
    where = choose(["top", "experiment", *BLOCKS, "dataset option"])
    if where == "top":
        config["resluts"] = "results"
    elif where == "experiment":
        config["experiments"]["demo"]["seed"] = [1]
    elif where == "dataset option":
        config["experiments"]["toy"]["dataset_options"]["gaussian_toy"]["n_points"] = 3
    else:
        config.setdefault(where, {"match": {"experiment": "toy"}} if where == "amortization" else {})["stepz"] = 1


MUTATIONS = [wrong_type, out_of_range, out_of_range_axis, non_finite, empty, repeated_entry, odd_name, unknown_key]


def repeated_key(text: str, choose: Choose) -> str:
    """The YAML text with one mapping key written twice (YAML would keep the second)."""
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z_][\w.+-]*:", line)]
    i = choose(keys)
    return "\n".join([*lines[: i + 1], lines[i], *lines[i + 1:]]) + "\n"


def mutated(choose: Choose) -> tuple[bytes, str]:
    """A config invalid by construction, as file content, and the mutation's name."""
    config = base_config(choose)
    if choose([True, False, False, False, False, False, False, False]):
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
        return repeated_key(text, choose).encode(), "repeated_key"
    mutation = choose(MUTATIONS)
    mutation(config, choose)
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode(), mutation.__name__


def _plan(content: bytes, tmp: Path, capsys) -> tuple[int, str, str]:
    path = tmp / "config.yaml"
    path.write_bytes(content)
    code = main(["plan", str(path), "--skipped", str(tmp / "skipped.csv")])
    out, err = capsys.readouterr()
    return code, out, err


def _hypothesis_choose(data) -> Choose:
    return lambda options: data.draw(st.sampled_from(list(options)))


# ---------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------
@settings(SETTINGS, max_examples=25)
@given(data=st.data())
def test_configs_generated_from_the_schema_plan(data, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("fuzz")
    code, out, err = _plan(yaml.safe_dump(base_config(_hypothesis_choose(data))).encode(), tmp, capsys)
    assert code == 0, err
    assert len(out.split()) == 4 and (tmp / "skipped.csv").exists()


@settings(SETTINGS, max_examples=120)
@given(data=st.data())
def test_every_mutated_config_is_one_line(data, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("fuzz")
    content, mutation = mutated(_hypothesis_choose(data))
    code, out, err = _plan(content, tmp, capsys)
    assert code in (1, 2) and code == 2, (mutation, err)  # 1 would be an internal error: a bug
    assert out == "" and len(err.strip().splitlines()) == 1, (mutation, err)
    assert "Traceback" not in err and err.startswith("lvmbench plan: error:"), (mutation, err)
    assert sorted(p.name for p in tmp.iterdir()) == ["config.yaml"], mutation  # nothing written


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
@pytest.mark.parametrize("seed", range(3))
def test_the_workflow_refuses_with_the_same_line(seed, tmp_path, capsys, monkeypatch):
    """One validator: Snakemake prints the line lvmbench plan prints."""
    content, mutation = mutated(random.Random(seed).choice)
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    (work / "config" / "config.yaml").write_bytes(content)
    monkeypatch.chdir(work)  # the config named as the workflow names it
    assert main(["plan", "config/config.yaml"]) == 2
    err = capsys.readouterr().err
    proc = subprocess.run(["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(work), "-n"],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("lvmbench config error:")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert lines == [err.strip().replace("lvmbench plan: error:", "lvmbench config error:")], (mutation, proc.stderr)
    assert not (work / "results").exists()
