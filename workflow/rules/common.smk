"""Config validation, the plan of cells, and the lookups the rules use.

No benchmark logic lives here: the schema checks the config's shape and types,
lvmbench.config.plan expands the axes into valid cells (and the skipped ones with
reasons), and the functions below map a wildcard to the cell's JSON or dataset.
A bad config stops the workflow with one line, before any job starts.
"""

import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from lvmbench.config import plan, resolve_variant
from lvmbench.registry import LvmbenchError

# keys of the config that lvmbench.config.plan reads; the others steer the workflow
PLAN_KEYS = ("experiments", "train", "eval", "gradvar", "data_dir", "device", "published")

# One software environment for every rule (used with --software-deployment-method conda);
# it installs this checkout of lvmbench, found through LVMBENCH_SOURCE.
ENV = "../envs/lvmbench.yaml"
os.environ.setdefault("LVMBENCH_SOURCE", str(Path(workflow.current_basedir, "..", "..").resolve()))


def config_error(message):
    """Stop with one line on stderr and no traceback."""
    sys.exit(f"lvmbench config error: {message}")


def schema_path(error):
    """experiments.demo.K[0] from a jsonschema error's path."""
    out = "config"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


try:  # an experiment config's variant (e.g. --config variant=short) is applied before anything else
    _resolved = resolve_variant(config)
except LvmbenchError as err:
    config_error(err)
config.clear()
config.update(_resolved)

try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as err:
    cause = err.__cause__ or err.__context__  # the jsonschema ValidationError
    if hasattr(cause, "absolute_path"):
        config_error(f"{schema_path(cause)}: {cause.message}")
    config_error(str(err).splitlines()[0])

try:
    PLANNED, SKIPPED = plan(config)
except LvmbenchError as err:
    config_error(err)
if not PLANNED:
    config_error(f"no combination of the axes can run, e.g. {SKIPPED[0]['reason']}")
CELLS = {cell.id: cell for cell in PLANNED}  # cell id -> lvmbench.config.Cell

RESULTS = config["results"].rstrip("/")
RUN = f"{RESULTS}/runs/{{cell}}"  # one directory per cell: <experiment>/<dataset>/<model>/<objective>/K<K>/<estimator>/seed<seed>
DATASETS = sorted({cell.dataset for cell in CELLS.values()})


wildcard_constraints:
    cell=r"[^/]+/[^/]+/[^/]+/[^/]+/K[0-9]+/[^/]+/seed[0-9]+",
    dataset="|".join(DATASETS),


def plan_config(wildcards):
    """The part of the config that lvmbench.config.plan reads, as JSON text."""
    return json.dumps({k: config[k] for k in PLAN_KEYS if k in config}, sort_keys=True)


def cell_json(wildcards):
    """The resolved cell as JSON: a rule whose cell changes reruns; the others do not."""
    return CELLS[wildcards.cell].to_json()


def run_dir(wildcards):
    return f"{RESULTS}/runs/{wildcards.cell}"


def prepared_dataset(wildcards):
    return f"{RESULTS}/data/{CELLS[wildcards.cell].dataset}.json"


def data_dir_option(wildcards):
    return ["--data-dir", config["data_dir"]] if config.get("data_dir") else []


def output_dir(wildcards, output):
    """The directory of a rule's first output (tables/)."""
    return os.path.dirname(output[0])


def first_output(wildcards, output):
    """A rule's first output (a directory output such as figures/)."""
    return output[0]


def input_dir(wildcards, input):
    """The directory of a rule's first input."""
    return os.path.dirname(input[0])


def run_dirs(wildcards=None):
    return [f"{RESULTS}/runs/{cell}" for cell in CELLS]


def amortized(cell):
    """Whether the config's amortization block selects this cell (every key of ``match``)."""
    block = config.get("amortization")
    return bool(block) and all(str(getattr(cell, k)) == str(v) for k, v in block["match"].items())


AMORTIZED = [cell_id for cell_id, cell in CELLS.items() if amortized(cell)]


def amortize_options(wildcards):
    block = config["amortization"]
    return ["--n-test", block.get("n_test", 100), "--steps", block.get("steps", 300), "--lr", block.get("lr", 0.01)]


def published_json(wildcards):
    """The config's published numbers as JSON text ([] when it has none)."""
    return json.dumps(config.get("published", []))


def run_files(name):
    """Every cell's ``name`` file (train.json, eval.json, gradvar.csv)."""
    return [f"{RESULTS}/runs/{cell}/{name}" for cell in CELLS]
