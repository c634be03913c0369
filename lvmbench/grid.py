"""The plan: which cells a pipeline config holds, why the other combinations cannot run,
and the measurement settings of each cell.

A *cell* is one training run: experiment x dataset x model x objective x K x estimator x
seed. :func:`plan` expands a config (see config/README.md) into the product over each
experiment's axes, keeps the combinations that :func:`why_invalid` accepts, and records
each skipped one with its reason. :func:`why_invalid` reads only the declarations of the
registry entries (the model's, the objective's and the estimator's), so the command line,
the trainer and the Snakemake pipeline agree on which combinations run.

The plan keeps what is trained (:class:`~lvmbench.settings.Cell`, the training spec) apart
from how it is measured (:class:`Measurements`: each cell's evaluation, gradient-variance
and amortization settings).

:func:`plan` is the one validator of a config: ``lvmbench plan`` and the workflow
(workflow/rules/common.smk) both call it, so they accept and refuse the same configs. It
checks the config against workflow/schemas/config.schema.yaml (types, ranges, unknown
keys), then every name against the registries and every value against what it takes
from: options a model, objective, estimator or dataset does not take, sizes larger than
the data they take from, tensors larger than :data:`MAX_ELEMENTS`, an amortization block
its cells cannot run, published numbers naming nothing the config declares. Each refusal
is one line, before any job starts.
"""

from __future__ import annotations

import functools
import itertools
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import jsonschema
import torch
import yaml

from lvmbench.data import DATASETS
from lvmbench.errors import LvmbenchError
from lvmbench.estimators import ESTIMATORS, make_estimator
from lvmbench.models import MODELS, LatentVariableModel, build_model
from lvmbench.models.base import fast_distributions, gaussian_family
from lvmbench.objectives import Objective, make_objective
from lvmbench.registry import did_you_mean
from lvmbench.report.claims import check_claims
from lvmbench.report.paper import check_published
from lvmbench.rng import forked_rng
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
    check_finite,
    leaves,
)

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
#: the most elements any one tensor of a job may hold (2^31: 8 GiB in float32, and the
#: limit of 32-bit indexing); a config whose sizes exceed it is refused up front
MAX_ELEMENTS = 2 ** 31
EXPERIMENT_KEYS = {"datasets", "models", "objectives", "K", "estimators", "seeds", "train", "eval",
                   "gradvar", "dataset_options"}
#: the cell fields an amortization or ais block may match on
MATCH_KEYS = ("experiment", "dataset", "model", "objective", "K", "estimator", "seed")
_CPU = torch.device("cpu")
_PROBE_DIM = 4  # data dimension of the models :func:`why_invalid` builds without a dataset


def why_invalid_for(model_name: str, model: LatentVariableModel, objective: Objective, K: int, estimator: str,
                    dataset: str | None = None) -> str | None:
    """Why (dataset, model, objective, K, estimator) cannot run, or None.

    ``model`` and ``objective`` are built (a model's ``exact`` may depend on its size);
    every other fact is a declaration on the model's, the objective's or the estimator's
    class. Unknown estimator or dataset names raise :class:`LvmbenchError`.
    """
    if not isinstance(K, int) or isinstance(K, bool) or K < 1:
        raise LvmbenchError(f"K must be an integer >= 1, got {K!r}")
    e = ESTIMATORS[estimator].obj
    if dataset is not None:
        kind = DATASETS[dataset].obj.kind
        if kind not in model.data:
            return f"model {model_name} takes {'/'.join(model.data)} data, dataset {dataset} is {kind}"
    if objective.needs_exact and not model.exact:
        return f"objective {objective.name} needs an exact log p(x); model {model_name} has none"
    if objective.name not in e.objectives:
        return f"estimator {estimator} supports objectives {', '.join(e.objectives)}, not {objective.name}"
    if e.requires_rsample and not model.reparameterizable:
        return (f"estimator {estimator} needs reparameterizable latents; model {model_name} has "
                f"{model.latent_kind} latents")
    if e.needs_model and not any(getattr(model, cap) for cap in e.needs_model):
        return f"estimator {estimator} needs a model that is {' or '.join(e.needs_model)}; {model_name} is not"
    if model.deterministic and "straight_through" not in e.needs_model:
        return f"model {model_name} has a deterministic (quantizing) encoder; only straight-through estimators train it"
    if model.deterministic and K != 1:
        return f"model {model_name} has a deterministic encoder, so only K=1 runs"
    if K < e.min_K:
        return f"estimator {estimator} needs K >= {e.min_K}, got K={K}"
    if e.max_K is not None and K > e.max_K:
        return f"estimator {estimator} uses no samples, so only K={e.max_K} runs"
    return objective.why_invalid(K)


def why_invalid(model: str, objective: str, K: int, estimator: str, dataset: str | None = None,
                model_options: dict | None = None, objective_options: dict | None = None) -> str | None:
    """:func:`why_invalid_for` by registry names: the model is built with ``model_options``
    (on the dataset's dimension, or a small one) and the objective with ``objective_options``."""
    dim = DATASETS[dataset].obj.dim if dataset is not None else _PROBE_DIM
    with forked_rng(_CPU):
        built = build_model(model, dim, **(model_options or {}))
    return why_invalid_for(model, built, make_objective(objective, **(objective_options or {})), K, estimator,
                           dataset)


def valid_estimators(model_name: str, model: LatentVariableModel, objective: Objective, K: int) -> list[str]:
    """Every registered estimator that can run on this model, objective and K."""
    return [e.name for e in ESTIMATORS if why_invalid_for(model_name, model, objective, K, e.name) is None]


def merge(base: Any, override: Any) -> Any:
    """Deep merge of mappings; ``None`` in ``override`` deletes the key."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(base.get(key), value)
    return out


def resolve_variant(config: dict) -> dict:
    """Apply ``config["variants"][config["variant"]]`` (a deep override) and drop both keys.

    An experiment config keeps its protocol once and names schedules as variants, e.g.
    ``short`` (minutes on one GPU) and ``smoke`` (seconds on CPU, for CI):
    ``snakemake --configfile config/experiments/burda2016.yaml --config variant=short``.
    """
    if not isinstance(config, dict):
        raise LvmbenchError(f"config: expected a mapping of keys, got {type(config).__name__}")
    variants = config.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise LvmbenchError("variants: expected a mapping of variant names to mappings of overrides")
    name = config.get("variant")
    if name is not None and not isinstance(name, str):
        raise LvmbenchError(f"variant: expected the name of one variant, got {name!r}")
    if name is not None and name not in variants:
        raise LvmbenchError(f"variant {name!r} is not defined; this config has: {', '.join(variants) or 'none'}")
    out = {k: v for k, v in config.items() if k not in ("variants", "variant")}
    return merge(out, variants[name]) if name is not None else out


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    if not SCHEMA.is_file():
        raise LvmbenchError(f"the config schema {SCHEMA} is missing; install lvmbench from its checkout "
                            f"(pip install -e .)")
    schema = yaml.safe_load(SCHEMA.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def _schema_path(error: jsonschema.ValidationError) -> str:
    """``config.experiments.demo.K[0]`` from a jsonschema error's path."""
    return "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def check_schema(config: dict) -> None:
    """The config (after its variant) against workflow/schemas/config.schema.yaml: one line
    for the most relevant error, naming where it is."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(config))
    if error is None:
        return
    allowed = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, dict) and allowed:
        unknown = sorted(str(k) for k in error.instance if k not in allowed)
        raise LvmbenchError(f"{_schema_path(error)}: unknown key(s) {unknown}{did_you_mean(unknown[0], allowed)}; "
                            f"allowed: {sorted(allowed)}")
    raise LvmbenchError(f"{_schema_path(error)}: {' '.join(error.message.split())}")


def _labelled(entries: Any, key: str, where: str) -> dict[str, tuple[str, dict]]:
    """A list of names or a mapping label -> options (with an optional ``key`` naming
    the registry entry, default the label) -> {label: (registry name, options)}."""
    if isinstance(entries, list):
        entries = {name: {} for name in entries}
    if not isinstance(entries, dict) or not entries:
        raise LvmbenchError(f"{where}: expected a non-empty list of names or a mapping name -> options")
    out = {}
    for label, opts in entries.items():
        opts = dict(opts or {})
        out[label] = (opts.pop(key, label), opts)
    return out


@dataclass(frozen=True)
class Measurements:
    """How one trained cell is measured: its evaluation and gradient-variance settings, its
    amortization settings when the config's ``amortization`` block selects it, and its AIS
    settings (part of evaluation) when the ``ais`` block selects it."""

    eval: EvalSettings
    gradvar: GradvarSettings
    amortize: AmortizeSettings | None = None
    ais: AISSettings | None = None


@dataclass(frozen=True)
class Plan:
    """The cells of a config (training specs), the skipped combinations with their reasons,
    each cell's measurement settings by cell id, the workflow's own settings, and warnings
    about values that run but are probably not meant (one line each)."""

    cells: list[Cell]
    skipped: list[dict]
    measurements: dict[str, Measurements]
    workflow: WorkflowSettings
    warnings: list[str] = field(default_factory=list)

    def amortized(self) -> list[Cell]:
        """The cells the amortization block selects."""
        return [c for c in self.cells if self.measurements[c.id].amortize is not None]


@dataclass(frozen=True)
class Bundle:
    """Cells equal but for their seed, trained together as one batched computation (one train
    job; see :mod:`lvmbench.train`). ``cells`` are in seed order."""

    cells: tuple[Cell, ...]

    @property
    def id(self) -> str:
        """The first cell's id with all the members' seeds: ``.../seed0+1+2``."""
        return self.cells[0].id.rsplit("/", 1)[0] + "/seed" + "+".join(str(c.seed) for c in self.cells)

    @property
    def key(self) -> str:
        """A short name for the bundle that depends on its members alone (a hash of
        :attr:`id`), never on its place in a list: a cluster job re-plans the workflow
        when other cells may have finished, and must find its own bundle by this name."""
        return hashlib.sha256(self.id.encode()).hexdigest()[:12]

    @property
    def spec(self) -> dict:
        """The training spec the members share: the first cell's, without its seed."""
        return {k: v for k, v in self.cells[0].to_dict().items() if k != "seed"}


def bundles(cells: list[Cell], size: int, finished: frozenset[str] = frozenset()) -> list[Bundle]:
    """Group the cells that differ only in their seed into bundles of at most ``size``, in seed
    order. Cells in ``finished`` (ids of cells already trained) stay alone: a finished cell
    never joins a bundle that still has to train, so adding a seed trains only the new cells
    and leaves the finished ones, and their measurements, as they are."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(json.dumps({k: v for k, v in cell.to_dict().items() if k != "seed"}, sort_keys=True),
                          []).append(cell)
    out = []
    for members in groups.values():
        members = sorted(members, key=lambda c: c.seed)
        out += [Bundle((c,)) for c in members if c.id in finished]
        todo = [c for c in members if c.id not in finished]
        out += [Bundle(tuple(todo[i:i + size])) for i in range(0, len(todo), size)]
    return out


# ---------------------------------------------------------------------------------------
# what a cell's jobs take from its data, and the memory they need
# ---------------------------------------------------------------------------------------
def amortization_objective(cell: Cell, s: AmortizeSettings) -> Objective:
    """The bound amortization optimises: ``s.objective``, else the run's when it is a
    sampled bound with the encoder as proposal, else the ELBO."""
    if s.objective:
        return make_objective(s.objective)
    objective = make_objective(cell.objective_name, **cell.objective_options)
    return objective if objective.sampled and objective.proposal == "encoder" else make_objective("elbo")


def amortization_sizes(cell: Cell, s: AmortizeSettings) -> tuple[int, int]:
    """(K, K_eval) of amortization: ``s.K`` else the run's K, and ``s.K_eval`` else the
    smallest multiple of K that is >= 1000."""
    K = s.K or cell.K
    return K, s.K_eval or K * math.ceil(1000 / K)


def check_settings(cell: Cell, settings: TrainSettings | EvalSettings | GradvarSettings | AmortizeSettings,
                   where: str) -> None:
    """Refuse ``settings`` that would fail or silently change meaning once the job runs on
    ``cell``: a size larger than the data it takes from (a batch of more training points
    than there are, more test points than the test set holds), a tensor of more than
    :data:`MAX_ELEMENTS` elements, an estimator gradvar does not know, an amortization K or
    K_eval its objective cannot use. ``lvmbench plan`` and the measurement commands call it
    before any work starts; ``where`` names the block in messages."""
    spec = DATASETS[cell.dataset].obj
    spec.check_options(cell.dataset, cell.dataset_options)
    n_train, n_test, D = spec.shape(cell.dataset_options)
    K = cell.K
    takes, tensors = [], []  # (setting, value, available, of what); (what, elements)
    if isinstance(settings, TrainSettings):
        takes = [("batch_size", settings.batch_size, n_train, "training points")]
        tensors = [("the training set (n_train x D)", n_train * D), ("the test set (n_test x D)", n_test * D),
                   ("a training step (K x batch_size x D)", K * settings.batch_size * D)]
    elif isinstance(settings, EvalSettings):
        takes = [("n_test", settings.n_test, n_test, "test points")]  # active_units_n: at most, as documented
        tensors = [("a chunk of samples (max(max_samples, batch_size) x D)",
                    max(settings.max_samples, settings.batch_size) * D)]
    elif isinstance(settings, GradvarSettings):
        unknown = [e for e in settings.estimators if e not in ESTIMATORS]
        if unknown:
            raise LvmbenchError(f"{where}.estimators: unknown estimator {unknown[0]!r}; choose one of: "
                                f"{', '.join(ESTIMATORS.names())}")
        takes = [("batch_size", settings.batch_size, n_train, "training points")]
        tensors = [("a gradient draw (K x batch_size x D)", K * settings.batch_size * D)]
    elif isinstance(settings, AmortizeSettings):
        objective = amortization_objective(cell, settings)
        K, K_eval = amortization_sizes(cell, settings)
        reason = objective.why_invalid(K)
        if reason:
            raise LvmbenchError(f"{where}: cell {cell.id}: {reason}")
        bad = sorted({K // M for M, _ in objective.encoder_terms(K) if K_eval % (K // M)})
        if bad:
            raise LvmbenchError(f"{where}.K_eval={K_eval} must be a multiple of the {objective.name} group size "
                                f"{', '.join(map(str, bad))} (K={K}) for cell {cell.id}")
        N = settings.n_test or n_test
        takes = [("n_test", settings.n_test, n_test, "test points")]
        tensors = [("a step (K x n_test x D)", K * N * D), ("the log-weights (K_eval x n_test)", K_eval * N),
                   ("a chunk of samples (max(max_samples, n_test) x D)", max(settings.max_samples, N) * D)]
    for key, value, available, what in takes:
        if value > available:
            raise LvmbenchError(f"{where}.{key}={value} exceeds the {available} {what} of {cell.dataset} "
                                f"(cell {cell.id}); lower it")
    for what, elements in tensors:
        if elements > MAX_ELEMENTS:
            raise LvmbenchError(f"{where}: {what} of cell {cell.id} would hold {elements:,} elements, more than "
                                f"the {MAX_ELEMENTS:,} one tensor may hold (D={D}); lower its sizes")


def _check_sizes(options: dict, where: str) -> None:
    """Every integer in a model's or an estimator's options (inside lists and mappings too)
    is a size or a count (components, hidden units, latent sizes, flow layers...): >= 1."""
    for at, leaf in leaves(options, where):
        if isinstance(leaf, int) and not isinstance(leaf, bool) and leaf < 1:
            raise LvmbenchError(f"{at} must be an integer >= 1 (a size), got {leaf}")


def _gaussian_encoder(model: LatentVariableModel, dim: int) -> str | None:
    """None when the encoder is a Gaussian per-datapoint inference can take over
    (Independent Normal or MultivariateNormal), else the name of its distribution."""
    with fast_distributions():
        q = model.encoder(torch.zeros(1, dim, device=next(model.parameters()).device))
    return None if gaussian_family(q) else type(q).__name__


def _selection(config: dict, key: str, cls: type, cells: list[Cell]) -> tuple[object | None, list[Cell]]:
    """The settings of the block ``config[key]`` (``amortization``, ``ais``) and the cells
    whose fields match every entry of its ``match``: a value, or a list of values any of
    which may match."""
    block = config.get(key)
    if block is None:
        return None, []
    if not isinstance(block, dict) or not isinstance(block.get("match"), dict) or not block["match"]:
        raise LvmbenchError(f"{key}: expected a mapping with a non-empty 'match' mapping")
    match = block["match"]
    unknown = set(match) - set(MATCH_KEYS)
    if unknown:
        raise LvmbenchError(f"{key}.match: unknown key(s) {sorted(unknown)}"
                            f"{did_you_mean(min(unknown), MATCH_KEYS)}; allowed: {list(MATCH_KEYS)}")
    settings = build_settings(cls, {k: v for k, v in block.items() if k != "match"}, key)
    allowed = {k: {str(x) for x in (v if isinstance(v, list) else [v])} for k, v in match.items()}
    chosen = [c for c in cells if all(str(getattr(c, k)) in values for k, values in allowed.items())]
    if not chosen:
        raise LvmbenchError(f"{key}.match {match} selects no cell of this config")
    return settings, chosen


def _check_amortized(cells: list[Cell], settings: AmortizeSettings,
                     built: dict[tuple[str, str, str], LatentVariableModel]) -> None:
    """Every cell the amortization block selects is one per-datapoint inference can run."""
    for c in cells:
        family = _gaussian_encoder(built[c.experiment, c.dataset, c.model], DATASETS[c.dataset].obj.dimension(
            c.dataset_options))
        if family is not None:
            raise LvmbenchError(f"amortization.match selects cell {c.id}, whose encoder is a {family}: per-datapoint "
                                f"inference needs a Gaussian encoder (vae with 1 stochastic layer and no flow, "
                                f"linear_gaussian); narrow the match")
        check_settings(c, settings, "amortization")


def _declared(axes: Any) -> dict[str, set[str]]:
    """The names an experiment declares on each axis (labels for models, objectives and
    estimators), whatever their form; empty where an axis is malformed."""
    out = {}
    for key in ("datasets", "models", "objectives", "K", "estimators"):
        value = axes.get(key) if isinstance(axes, dict) else None
        out[key] = {str(v) for v in value} if isinstance(value, (list, dict)) else set()
    return out


def _check_published_names(published: list[dict], *configs: dict) -> None:
    """Every published row names an experiment of the config (with or without its variant:
    a smoke variant may drop experiments whose numbers then read "not run") and, in it, a
    declared dataset, model, objective, K and estimator."""
    for i, row in enumerate(published):
        for config in configs:
            experiments = config.get("experiments") if isinstance(config.get("experiments"), dict) else {}
            if row["experiment"] not in experiments:
                continue
            axes = _declared(experiments[row["experiment"]])
            missing = [f"{key} {row[key]!r}" for key, axis in (("dataset", "datasets"), ("model", "models"),
                                                                ("objective", "objectives"), ("K", "K"),
                                                                ("estimator", "estimators"))
                       if key in row and str(row[key]) not in axes[axis]]
            if not missing:
                break
        else:
            declared = sorted({e for c in configs if isinstance(c.get("experiments"), dict) for e in c["experiments"]})
            raise LvmbenchError(f"published[{i}] names {', '.join(f'{k}={row[k]!r}' for k in MATCH_KEYS if k in row)}"
                                f", which the config does not declare (experiments: {', '.join(declared)})")


# ---------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------
def _booleans_read(config: dict) -> dict:
    """``config`` with "true"/"false" (any case) read as booleans for the top-level keys
    that take them: Snakemake's ``--config compile=false`` passes the string."""
    takes_bool = {f.name for f in fields(WorkflowSettings) if any(v is True for v in f.metadata.get("enum", ()))}
    return {k: ({"true": True, "false": False}.get(v.lower(), v) if k in takes_bool and isinstance(v, str) else v)
            for k, v in config.items()}


def plan(config: dict) -> Plan:
    """Validate ``config`` (module docstring) and expand ``config["experiments"]`` (after its
    variant, if any) into valid cells, the skipped combinations with reasons, and each
    cell's measurement settings."""
    check_finite(config, "config")  # before the schema, whose number type takes NaN
    base, config = config, _booleans_read(resolve_variant(config))
    check_schema(config)
    if config.get("published") is not None:
        check_published(config["published"])
        _check_published_names(config["published"], base, config)
    if config.get("claims") is not None:
        check_claims(config["claims"])
    workflow = build_settings(WorkflowSettings, {f.name: config[f.name] for f in fields(WorkflowSettings)
                                                 if f.name in config}, "config")
    experiments = config.get("experiments")
    if not isinstance(experiments, dict) or not experiments:
        raise LvmbenchError("config: 'experiments' must map experiment names to their axes")
    cells, skipped, measurements, warnings, built = [], [], {}, [], {}
    for exp, axes in experiments.items():
        where = f"experiments.{exp}"
        if not isinstance(axes, dict):
            raise LvmbenchError(f"{where}: expected a mapping of axes")
        unknown = set(axes) - EXPERIMENT_KEYS
        if unknown:
            raise LvmbenchError(f"{where}: unknown key(s) {sorted(unknown)}{did_you_mean(min(unknown), EXPERIMENT_KEYS)}; "
                                f"allowed: {sorted(EXPERIMENT_KEYS)}")
        missing = {"datasets", "models", "objectives", "K", "estimators"} - set(axes)
        if missing:
            raise LvmbenchError(f"{where}: missing key(s) {sorted(missing)}")
        if not isinstance(exp, str) or not re.fullmatch(LABEL, exp):
            raise LvmbenchError(f"{where}: experiment names start with a letter or digit and use letters, digits "
                                f"and _ . + - only (they become path components)")
        models = _labelled(axes["models"], "model", f"{where}.models")
        objectives = _labelled(axes["objectives"], "objective", f"{where}.objectives")
        estimators = _labelled(axes["estimators"], "estimator", f"{where}.estimators")
        for axis, registry, entries in (("models", MODELS, models), ("estimators", ESTIMATORS, estimators)):
            for name, _ in entries.values():
                if name not in registry:
                    raise LvmbenchError(f"{where}.{axis}: {registry.unknown(name)}")
        built_objectives = {}
        for label, (name, opts) in objectives.items():
            try:
                built_objectives[label] = make_objective(name, **opts)
            except LvmbenchError as err:
                raise LvmbenchError(f"{where}.objectives: {err}") from None
        for d in axes["datasets"]:
            if d not in DATASETS:
                raise LvmbenchError(f"{where}.datasets: {DATASETS.unknown(d)}")
        for label in [*models, *objectives, *estimators]:
            if not isinstance(label, str) or not re.fullmatch(LABEL, label):
                raise LvmbenchError(f"{where}: label {label!r} must start with a letter or digit and use letters, "
                                    f"digits and _ . + - only")
        seeds = axes.get("seeds", [0])
        for seed in seeds:
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise LvmbenchError(f"{where}.seeds: every seed must be an integer >= 0, got {seed!r}")
        given_options = axes.get("dataset_options", {})
        strays = sorted(set(given_options) - set(axes["datasets"]))
        if strays:
            raise LvmbenchError(f"{where}.dataset_options: {', '.join(map(str, strays))} is not one of this "
                                f"experiment's datasets ({', '.join(axes['datasets'])})")
        dataset_options = {d: dict(given_options.get(d) or {}) for d in axes["datasets"]}
        for d, opts in dataset_options.items():
            try:
                DATASETS[d].obj.check_options(d, opts)
            except LvmbenchError as err:
                raise LvmbenchError(f"{where}.dataset_options.{d}: {err}") from None
        dims = {d: DATASETS[d].obj.dimension(dataset_options[d]) for d in axes["datasets"]}
        with forked_rng(_CPU), torch.device("meta"):  # declarations and sizes only: no memory, no draws
            for d, (axis, (label, (name, opts))) in itertools.product(
                    axes["datasets"], [*(("models", m) for m in models.items()),
                                       *(("estimators", e) for e in estimators.items())]):
                try:
                    _check_sizes(opts, f"{where}.{axis}.{label}")
                    if axis == "estimators":
                        make_estimator(name, dims[d], **opts)
                        continue
                    built[exp, d, label] = model = build_model(name, dims[d], **opts)
                except LvmbenchError as err:
                    raise LvmbenchError(f"{where}.{axis}.{label}: {err}") from None
                n_params = sum(p.numel() for p in model.parameters())
                if n_params > MAX_ELEMENTS:
                    raise LvmbenchError(f"{where}.models.{label}: {n_params:,} parameters on {d}, more than the "
                                        f"{MAX_ELEMENTS:,} one job may hold; make it smaller")
        for k in axes["K"]:
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise LvmbenchError(f"{where}.K: every K must be an integer >= 1, got {k!r}")
        train = {**config.get("train", {}), **axes.get("train", {})}
        try:
            measured = Measurements(
                build_settings(EvalSettings, {**config.get("eval", {}), **axes.get("eval", {})}, "eval"),
                build_settings(GradvarSettings, {**config.get("gradvar", {}), **axes.get("gradvar", {})}, "gradvar"))
        except LvmbenchError as err:
            raise LvmbenchError(f"{where}: {err}") from None
        n_before = len(cells)
        for dataset, (m_label, (m_name, m_opts)), (o_label, (o_name, o_opts)), K, (e_label, (e_name, e_opts)), \
                seed in itertools.product(axes["datasets"], models.items(), objectives.items(), axes["K"],
                                          estimators.items(), seeds):
            reason = why_invalid_for(m_name, built[exp, dataset, m_label], built_objectives[o_label], K, e_name,
                                     dataset=dataset)
            row = {"experiment": exp, "dataset": dataset, "model": m_label, "objective": o_label, "K": K,
                   "estimator": e_label, "seed": seed}
            if reason is not None:
                skipped.append({**row, "reason": reason})
                continue
            try:
                cell = Cell.from_dict({
                    **row, "model_name": m_name, "objective_name": o_name, "estimator_name": e_name,
                    "estimator_options": e_opts, "dataset_options": dataset_options[dataset],
                    "model_options": m_opts, "objective_options": o_opts, "train": train})
            except LvmbenchError as err:
                raise LvmbenchError(f"{where}: {err}") from None
            for block, settings in (("train", cell.train), ("eval", measured.eval), ("gradvar", measured.gradvar)):
                check_settings(cell, settings, f"{where}.{block}")
            cells.append(cell)
            measurements[cell.id] = measured
        if len(cells) == n_before:
            reasons = [r["reason"] for r in skipped if r["experiment"] == exp]
            raise LvmbenchError(f"{where}: no combination of its axes can run"
                                + (f", e.g. {reasons[-1]}" if reasons else " (an axis is empty)"))
        above = sorted({c.K for c in cells[n_before:] if c.K > measured.eval.K_eval})
        if above:
            warnings.append(f"{where}: eval.K_eval={measured.eval.K_eval} is below the training K of its cells "
                            f"with K in {above}: their L_K_eval is a looser bound than the one they were trained on")
    ids = [c.id for c in cells]
    if len(ids) != len(set(ids)):
        raise LvmbenchError("config: two experiments produce the same cell id; give them distinct names")
    amortize, amortized = _selection(config, "amortization", AmortizeSettings, cells)
    if amortize is not None:
        _check_amortized(amortized, amortize, built)
    ais, annealed = _selection(config, "ais", AISSettings, cells)
    discrete = sorted(c.id for c in annealed if MODELS[c.model_name].obj.latent_kind != "continuous")
    if discrete:
        raise LvmbenchError(f"ais.match selects cells without continuous latents, which AIS with HMC cannot "
                            f"anneal: {', '.join(discrete[:3])}")
    amortized, annealed = {c.id for c in amortized}, {c.id for c in annealed}
    measurements = {i: Measurements(m.eval, m.gradvar, amortize if i in amortized else None,
                                    ais if i in annealed else None) for i, m in measurements.items()}
    return Plan(cells, skipped, measurements, workflow, warnings)
