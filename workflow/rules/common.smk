"""Config validation, the plan of cells, and the lookups the rules use.

No benchmark logic lives here: lvmbench.grid.plan is the one validator of a config
(the schema, the registries, the ranges and sizes: `lvmbench plan` calls the same
function, so both accept and refuse the same configs) and expands the axes into valid
cells (and the skipped ones with reasons) with each cell's measurement settings; the
functions below map a wildcard to what one rule needs. A bad config stops the workflow
with one line, before any job starts.

Each rule's params hold only its own part: train the training spec, evaluate the eval
settings (and the AIS settings of the cells the ais block selects), gradvar the
gradient-variance settings, amortize the amortization settings.
Snakemake reruns a job when its params change, so editing a measurement's settings
reruns that measurement and never training. Where a job runs (the device and the GPUs
it asked for) and where it finds its data are not part of any of them: they reach the
jobs as the environment variables LVMBENCH_DEVICE, LVMBENCH_GPUS, LVMBENCH_COMPILE and
LVMBENCH_DATA, and changing them reruns nothing.
"""

import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from lvmbench.errors import LvmbenchError
from lvmbench.grid import bundles, plan, resolve_variant
from lvmbench.runs import RunDir
from lvmbench.settings import WorkflowSettings

WORKFLOW_KEYS = {f.name for f in fields(WorkflowSettings)}  # where jobs run and write

# One software environment for every rule (used with --software-deployment-method conda);
# it installs this checkout of lvmbench, found through LVMBENCH_SOURCE.
ENV = "../envs/lvmbench.yaml"
os.environ.setdefault("LVMBENCH_SOURCE", str(Path(workflow.current_basedir, "..", "..").resolve()))


def config_error(message):
    """Stop with one line on stderr and no traceback."""
    sys.exit(f"lvmbench config error: {message}")


try:
    PLAN = plan(config)
except LvmbenchError as err:
    config_error(err)
for warning in PLAN.warnings:
    print(f"lvmbench config warning: {warning}", file=sys.stderr)
# the rules read the config as planned: an experiment config's variant (e.g. --config
# variant=short) applied
_resolved = resolve_variant(config)
config.clear()
config.update(_resolved)
CELLS = {cell.id: cell for cell in PLAN.cells}  # cell id -> lvmbench.settings.Cell (the training spec)
AMORTIZED = [cell.id for cell in PLAN.amortized()]

RESULTS = PLAN.workflow.results.rstrip("/")
RUN = f"{RESULTS}/runs/{{cell}}"  # one directory per cell: <experiment>/<dataset>/<model>/<objective>/K<K>/<estimator>/seed<seed>
DATASETS = sorted({cell.dataset for cell in CELLS.values()})
# Cells equal but for the seed train together, at most `bundle` per train job; a cell
# already trained stays alone, so adding seeds reruns nothing of the finished ones.
FINISHED = frozenset(c.id for c in PLAN.cells if RunDir(f"{RESULTS}/runs/{c.id}").is_finished(c))
BUNDLES = bundles(PLAN.cells, PLAN.workflow.bundle, FINISHED)
# Where jobs run, the GPUs they asked for and where they find their data reach them through
# the environment, never through params: every job (local or on a cluster node) parses this
# file again, so it sees them too. A job that asked for GPUs stops when torch sees none
# where there are some (lvmbench.devices). LVMBENCH_PARENT_PID is the Snakemake process
# running the jobs (on a cluster node, the one there): a job watches it and stops when it
# is gone (lvmbench.runs.watch_parent).
os.environ.update(
    {
        "LVMBENCH_DEVICE": PLAN.workflow.device,
        "LVMBENCH_GPUS": str(PLAN.workflow.gpu),
        "LVMBENCH_COMPILE": str(PLAN.workflow.compile).lower(),
        "LVMBENCH_PARENT_PID": str(os.getpid()),
        **({"LVMBENCH_DATA": PLAN.workflow.data_dir} if PLAN.workflow.data_dir else {}),
    }
)
THREADS, GPUS = PLAN.workflow.threads, PLAN.workflow.gpu
# The image of every job with --software-deployment-method apptainer (README, "Containers").
CONTAINER = PLAN.workflow.container
if DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method and not CONTAINER:
    config_error(
        "--software-deployment-method apptainer needs the config key container: a .sif file built from the "
        "repository's Dockerfile or a docker:// URI of it (README, 'Containers')"
    )


wildcard_constraints:
    cell=r"[^/]+/[^/]+/[^/]+/[^/]+/K[0-9]+/[^/]+/seed[0-9]+",
    dataset="|".join(DATASETS),


def plan_config(wildcards):
    """The config as JSON text for lvmbench plan, without the keys that only say where jobs
    run and write (so that changing them reruns nothing) and without the published numbers
    and the claims, which the plan does not need: PLAN checked them above against the config
    as given, whose experiments a variant may drop (their numbers and claims then read "not
    run")."""
    return json.dumps(
        {k: v for k, v in config.items() if k not in WORKFLOW_KEYS | {"published", "claims"}}, sort_keys=True
    )


def _settings_json(settings):
    return json.dumps(settings.to_dict(), sort_keys=True)


def eval_settings(wildcards):
    return _settings_json(PLAN.measurements[wildcards.cell].eval)


def ais_settings(wildcards):
    """The cell's AIS settings as JSON, or null when the config's ais block does not select it."""
    ais = PLAN.measurements[wildcards.cell].ais
    return "null" if ais is None else _settings_json(ais)


def gradvar_settings(wildcards):
    return _settings_json(PLAN.measurements[wildcards.cell].gradvar)


def amortize_settings(wildcards):
    return _settings_json(PLAN.measurements[wildcards.cell].amortize)


def run_dir(wildcards):
    return f"{RESULTS}/runs/{wildcards.cell}"


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


def published_json(wildcards):
    """The config's published numbers as JSON text ([] when it has none)."""
    return json.dumps(config.get("published", []))


def claims_json(wildcards):
    """The config's paper claims as JSON text ([] when it has none)."""
    return json.dumps(config.get("claims", []))


def run_files(name, cells=CELLS):
    """Every cell's ``name`` file (train.json, eval.json, gradvar.csv, amortization.json)."""
    return [f"{RESULTS}/runs/{cell}/{name}" for cell in cells]
