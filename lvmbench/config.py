"""Run settings, cells and the benchmark plan.

A *cell* is one training run: experiment x dataset x model x objective x K x
estimator x seed. :func:`plan` expands a pipeline config (see config/README.md) into
the product over its axes, keeps the combinations every registry entry declares valid
and records each skipped one with its reason. Every default lives here, typed, in
one place; unknown keys and wrong types raise :class:`LvmbenchError`.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, get_type_hints

from lvmbench.registry import LvmbenchError, why_invalid


def build_settings(cls, values: dict | None, where: str):
    """Instantiate a settings dataclass from a dict, rejecting unknown keys and wrong types."""
    values = dict(values or {})
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise LvmbenchError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    for key, value in values.items():
        want = hints[key]
        ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}.get(want)
        if ok is not None and not ok(value):
            raise LvmbenchError(f"{where}.{key}: expected {want.__name__}, got {value!r}")
        if ok is float:
            values[key] = float(value)
    obj = cls(**values)
    obj.check(where)
    return obj


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation of one cell (Adam; Burda et al. use eps=1e-4, batch 20)."""

    steps: int = 1000  # optimiser steps; ignored by schedule=burda, whose stages set the length
    batch_size: int = 20
    lr: float = 1e-3
    adam_eps: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    schedule: str = "constant"  # constant | cosine | burda (lr * 10^(-i/7) for 3^i epochs, i < burda_stages)
    burda_stages: int = 8  # 8 stages = Burda's 3280 epochs
    checkpoint_every: int = 500  # steps between resumable checkpoints
    log_every: int = 50  # steps per row of train.csv
    snapshots: int = 2  # parameter snapshots kept for gradient variance, evenly spaced incl. start and end

    def check(self, where: str) -> None:
        for key in ("steps", "batch_size", "burda_stages", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise LvmbenchError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise LvmbenchError(f"{where}.lr must be > 0, got {self.lr}")
        if self.schedule not in ("constant", "cosine", "burda"):
            raise LvmbenchError(f"{where}.schedule must be constant, cosine or burda, got {self.schedule!r}")
        if self.snapshots < 1:
            raise LvmbenchError(f"{where}.snapshots must be >= 1, got {self.snapshots}")


@dataclass(frozen=True)
class EvalSettings:
    """Large-K evaluation (Burda et al.: L_5000 on the whole test set)."""

    K_eval: int = 5000
    k_grid: tuple[int, ...] = (1, 5, 50, 500, 5000)  # each k must divide K_eval
    batch_size: int = 100  # test points per pass
    max_samples: int = 200_000  # samples x test points held at once (memory bound)
    n_test: int = 0  # 0 = the whole test set, else its first n_test points
    active_units_n: int = 500  # first training images for active units (Burda)
    ordering_threshold: float = 3.0  # a bound-ordering violation is z < -threshold standard errors
    seed: int = 0

    def check(self, where: str) -> None:
        if self.K_eval < 1:
            raise LvmbenchError(f"{where}.K_eval must be >= 1, got {self.K_eval}")
        bad = [k for k in self.k_grid if not isinstance(k, int) or k < 1 or self.K_eval % k]
        if bad:
            raise LvmbenchError(f"{where}.k_grid: every k must be a positive divisor of K_eval={self.K_eval}; not {bad}")
        for key in ("batch_size", "max_samples"):
            if getattr(self, key) < 1:
                raise LvmbenchError(f"{where}.{key} must be >= 1")


@dataclass(frozen=True)
class GradvarSettings:
    """Gradient-variance measurement at each training snapshot."""

    draws: int = 100  # independent gradient draws M
    batch_size: int = 32  # fixed minibatch of training points
    estimators: tuple[str, ...] = ()  # empty = every valid estimator in the registry
    seed: int = 0

    def check(self, where: str) -> None:
        if self.draws < 2:
            raise LvmbenchError(f"{where}.draws must be >= 2, got {self.draws}")
        if self.batch_size < 1:
            raise LvmbenchError(f"{where}.batch_size must be >= 1")


@dataclass(frozen=True)
class Cell:
    """One training run, fully resolved."""

    experiment: str
    dataset: str
    model: str  # label in the config; ``model_name`` is the registry entry
    model_name: str
    objective: str
    objective_name: str
    K: int
    estimator: str  # label in the config; ``estimator_name`` is the registry entry
    seed: int
    estimator_name: str = ""
    dataset_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    objective_options: dict = field(default_factory=dict)
    estimator_options: dict = field(default_factory=dict)
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    gradvar: GradvarSettings = GradvarSettings()
    data_dir: str | None = None
    device: str = "auto"

    @property
    def id(self) -> str:
        return f"{self.experiment}/{self.dataset}/{self.model}/{self.objective}/K{self.K}/{self.estimator}/seed{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Cell":
        d = dict(d)
        for axis in ("model", "objective", "estimator"):  # the registry name defaults to the label
            if not d.get(f"{axis}_name") and axis in d:
                d[f"{axis}_name"] = d[axis]
        d["train"] = build_settings(TrainSettings, d.get("train"), "train")
        d["eval"] = build_settings(EvalSettings, _tuples(d.get("eval")), "eval")
        d["gradvar"] = build_settings(GradvarSettings, _tuples(d.get("gradvar")), "gradvar")
        names = {f.name for f in fields(cls)}
        if set(d) - names:
            raise LvmbenchError(f"cell: unknown key(s) {sorted(set(d) - names)}")
        return cls(**d)


def _tuples(d: dict | None) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (d or {}).items()}


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


LABEL = re.compile(r"[A-Za-z0-9_.+-]+")
DEVICE = re.compile(r"auto|cpu|cuda|cuda:[0-9]+")
EXPERIMENT_KEYS = {"datasets", "models", "objectives", "K", "estimators", "seeds", "train", "eval",
                   "gradvar", "dataset_options"}


def plan(config: dict) -> tuple[list[Cell], list[dict]]:
    """Expand ``config["experiments"]`` (after its variant, if any) into valid cells and
    skipped combinations with reasons."""
    from lvmbench.data import DATASETS
    from lvmbench.estimators import ESTIMATORS
    from lvmbench.models import MODELS, build_model
    from lvmbench.objectives import make_objective

    config = resolve_variant(config)
    if config.get("published") is not None:
        from lvmbench.paper import check_published

        check_published(config["published"])
    if not DEVICE.fullmatch(str(config.get("device", "auto"))):
        raise LvmbenchError(f"config.device must be auto, cpu, cuda or cuda:N, got {config.get('device')!r}")
    experiments = config.get("experiments")
    if not isinstance(experiments, dict) or not experiments:
        raise LvmbenchError("config: 'experiments' must map experiment names to their axes")
    cells, skipped = [], []
    for exp, axes in experiments.items():
        where = f"experiments.{exp}"
        if not isinstance(axes, dict):
            raise LvmbenchError(f"{where}: expected a mapping of axes")
        unknown = set(axes) - EXPERIMENT_KEYS
        if unknown:
            raise LvmbenchError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(EXPERIMENT_KEYS)}")
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
                    raise LvmbenchError(f"{where}.{axis}: unknown {registry.kind} {name!r}; choose one of: "
                                        f"{', '.join(registry.names())}")
        for name, opts in objectives.values():
            try:
                make_objective(name, **opts)
            except LvmbenchError as err:
                raise LvmbenchError(f"{where}.objectives: {err}") from None
        for d in axes["datasets"]:
            if d not in DATASETS:
                raise LvmbenchError(f"{where}.datasets: unknown dataset {d!r}; choose one of: {', '.join(DATASETS)}")
        for label in [*models, *objectives, *estimators]:
            if not LABEL.fullmatch(str(label)):
                raise LvmbenchError(f"{where}: label {label!r} may use letters, digits and _ . + - only")
        for seed in axes.get("seeds", [0]):
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise LvmbenchError(f"{where}.seeds: every seed must be an integer >= 0, got {seed!r}")
        for d in axes["datasets"]:
            unknown = set(axes.get("dataset_options", {}).get(d, {})) - set(DATASETS[d].options)
            if unknown:
                raise LvmbenchError(f"{where}.dataset_options.{d}: unknown option(s) {sorted(unknown)}; valid: "
                                    f"{', '.join(DATASETS[d].options) or 'none'}")
        for label, (name, opts) in models.items():  # bad options fail here, not inside a job
            build_model(name, DATASETS[axes["datasets"][0]].dim, **opts)
        for k in axes["K"]:
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise LvmbenchError(f"{where}.K: every K must be an integer >= 1, got {k!r}")
        shared = {
            "train": {**config.get("train", {}), **axes.get("train", {})},
            "eval": {**config.get("eval", {}), **axes.get("eval", {})},
            "gradvar": {**config.get("gradvar", {}), **axes.get("gradvar", {})},
        }
        n_before = len(cells)
        for dataset, (m_label, (m_name, m_opts)), (o_label, (o_name, o_opts)), K, (e_label, (e_name, e_opts)), \
                seed in itertools.product(axes["datasets"], models.items(), objectives.items(), axes["K"],
                                          estimators.items(), axes.get("seeds", [0])):
            reason = why_invalid(m_name, o_name, K, e_name, dataset=dataset, objective_options=o_opts)
            row = {"experiment": exp, "dataset": dataset, "model": m_label, "objective": o_label, "K": K,
                   "estimator": e_label, "seed": seed}
            if reason is not None:
                skipped.append({**row, "reason": reason})
                continue
            try:
                cell = Cell.from_dict({
                    **row, "model_name": m_name, "objective_name": o_name, "estimator_name": e_name,
                    "estimator_options": e_opts,
                    "dataset_options": dict(axes.get("dataset_options", {}).get(dataset, {})),
                    "model_options": m_opts, "objective_options": o_opts, **shared,
                    "data_dir": config.get("data_dir"), "device": config.get("device", "auto")})
            except LvmbenchError as err:
                raise LvmbenchError(f"{where}: {err}") from None
            cells.append(cell)
        if len(cells) == n_before:
            reason = next(r["reason"] for r in reversed(skipped) if r["experiment"] == exp)
            raise LvmbenchError(f"{where}: no combination of its axes can run, e.g. {reason}")
    ids = [c.id for c in cells]
    if len(ids) != len(set(ids)):
        raise LvmbenchError("config: two experiments produce the same cell id; give them distinct names")
    return cells, skipped

