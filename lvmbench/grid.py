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
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, fields
from typing import Any

import torch

from lvmbench.data import DATASETS
from lvmbench.errors import LvmbenchError
from lvmbench.estimators import ESTIMATORS
from lvmbench.models import MODELS, LatentVariableModel, build_model
from lvmbench.objectives import Objective, make_objective
from lvmbench.registry import did_you_mean
from lvmbench.report.paper import check_published
from lvmbench.rng import forked_rng
from lvmbench.settings import AmortizeSettings, Cell, EvalSettings, GradvarSettings, WorkflowSettings, build_settings

LABEL = re.compile(r"[A-Za-z0-9_.+-]+")
EXPERIMENT_KEYS = {"datasets", "models", "objectives", "K", "estimators", "seeds", "train", "eval",
                   "gradvar", "dataset_options"}
#: the cell fields an amortization block may match on
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
    variants = config.get("variants") or {}
    name = config.get("variant")
    if name is not None and name not in variants:
        raise LvmbenchError(f"variant {name!r} is not defined; this config has: {', '.join(variants) or 'none'}")
    out = {k: v for k, v in config.items() if k not in ("variants", "variant")}
    return merge(out, variants[name]) if name is not None else out


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
    """How one trained cell is measured: its evaluation and gradient-variance settings, and
    its amortization settings when the config's ``amortization`` block selects it."""

    eval: EvalSettings
    gradvar: GradvarSettings
    amortize: AmortizeSettings | None = None


@dataclass(frozen=True)
class Plan:
    """The cells of a config (training specs), the skipped combinations with their reasons,
    each cell's measurement settings by cell id, and the workflow's own settings."""

    cells: list[Cell]
    skipped: list[dict]
    measurements: dict[str, Measurements]
    workflow: WorkflowSettings

    def amortized(self) -> list[Cell]:
        """The cells the amortization block selects."""
        return [c for c in self.cells if self.measurements[c.id].amortize is not None]


def _amortization(config: dict, cells: list[Cell]) -> tuple[AmortizeSettings | None, set[str]]:
    """The amortization settings and the ids of the cells whose fields equal every entry of
    the block's ``match``."""
    block = config.get("amortization")
    if block is None:
        return None, set()
    if not isinstance(block, dict) or not isinstance(block.get("match"), dict) or not block["match"]:
        raise LvmbenchError("amortization: expected a mapping with a non-empty 'match' mapping")
    match = block["match"]
    unknown = set(match) - set(MATCH_KEYS)
    if unknown:
        raise LvmbenchError(f"amortization.match: unknown key(s) {sorted(unknown)}"
                            f"{did_you_mean(min(unknown), MATCH_KEYS)}; allowed: {list(MATCH_KEYS)}")
    settings = build_settings(AmortizeSettings, {k: v for k, v in block.items() if k != "match"}, "amortization")
    chosen = {c.id for c in cells if all(str(getattr(c, k)) == str(v) for k, v in match.items())}
    if not chosen:
        raise LvmbenchError(f"amortization.match {match} selects no cell of this config")
    return settings, chosen


def plan(config: dict) -> Plan:
    """Expand ``config["experiments"]`` (after its variant, if any) into valid cells, the
    skipped combinations with reasons, and each cell's measurement settings."""
    config = resolve_variant(config)
    if config.get("published") is not None:
        check_published(config["published"])
    workflow = build_settings(WorkflowSettings, {f.name: config[f.name] for f in fields(WorkflowSettings)
                                                 if f.name in config}, "config")
    experiments = config.get("experiments")
    if not isinstance(experiments, dict) or not experiments:
        raise LvmbenchError("config: 'experiments' must map experiment names to their axes")
    cells, skipped, measurements = [], [], {}
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
        if not LABEL.fullmatch(str(exp)):
            raise LvmbenchError(f"{where}: experiment names may use letters, digits and _ . + - only "
                                f"(they become path components)")
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
            if not LABEL.fullmatch(str(label)):
                raise LvmbenchError(f"{where}: label {label!r} may use letters, digits and _ . + - only")
        for seed in axes.get("seeds", [0]):
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise LvmbenchError(f"{where}.seeds: every seed must be an integer >= 0, got {seed!r}")
        dataset_options = {d: dict(axes.get("dataset_options", {}).get(d, {})) for d in axes["datasets"]}
        for d, opts in dataset_options.items():
            unknown = set(opts) - set(DATASETS[d].options())
            if unknown:
                raise LvmbenchError(f"{where}.dataset_options.{d}: unknown option(s) {sorted(unknown)}; valid: "
                                    f"{', '.join(DATASETS[d].options()) or 'none'}")
        with forked_rng(_CPU):  # building models draws initial weights: keep the caller's RNG
            built = {(d, label): build_model(name, DATASETS[d].obj.dimension(dataset_options[d]), **opts)
                     for d in axes["datasets"] for label, (name, opts) in models.items()}
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
                                          estimators.items(), axes.get("seeds", [0])):
            reason = why_invalid_for(m_name, built[dataset, m_label], built_objectives[o_label], K, e_name,
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
            cells.append(cell)
            measurements[cell.id] = measured
        if len(cells) == n_before:
            reason = next(r["reason"] for r in reversed(skipped) if r["experiment"] == exp)
            raise LvmbenchError(f"{where}: no combination of its axes can run, e.g. {reason}")
    ids = [c.id for c in cells]
    if len(ids) != len(set(ids)):
        raise LvmbenchError("config: two experiments produce the same cell id; give them distinct names")
    amortize, chosen = _amortization(config, cells)
    measurements = {i: Measurements(m.eval, m.gradvar, amortize if i in chosen else None)
                    for i, m in measurements.items()}
    return Plan(cells, skipped, measurements, workflow)
