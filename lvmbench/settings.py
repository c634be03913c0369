"""Typed settings, and the training spec of a cell.

What is trained is kept apart from how it is measured:

* :class:`Cell` is the *training spec*: dataset, model, objective, K, estimator (each with
  its options), seed and :class:`TrainSettings`. It alone identifies a trained model: its
  run directory, ``cell.json``, its checkpoint and the train rule's params hold it and
  nothing else.
* :class:`EvalSettings` (with :class:`AISSettings` for the cells the config's ``ais`` block
  selects), :class:`GradvarSettings` and :class:`AmortizeSettings` are the measurements' own
  settings. Each measurement receives only its own, and records them in
  its output; changing one reruns that measurement, never training.

Every default and every range lives here, once, on the dataclass field
(:func:`setting`); the schema (workflow/schemas/config.schema.yaml) and config/README.md
state the same, which a test checks. :func:`build_settings` refuses unknown keys, wrong
types, NaN and out-of-range values with one line; :func:`check_finite` refuses NaN and
infinities anywhere in a nested config, and :meth:`Cell.from_dict` checks every field of a
training spec.
"""

from __future__ import annotations

import json
import math
import os
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Iterator, get_type_hints

from lvmbench.errors import LvmbenchError
from lvmbench.registry import did_you_mean

#: names that become path components (experiments; dataset, model, objective and estimator
#: labels): they start with a letter or digit, so none is "." or ".." or hidden, and hold at
#: most 128 characters, well within a file name's 255 bytes
LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$"
#: the devices a job may name: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N
DEVICE = r"^(auto|cpu|cuda|cuda:[0-9]+)$"
#: the largest seed: torch's generators take signed 64-bit seeds
SEED_MAX = 2 ** 63 - 1


def setting(default: Any, *, minimum: float | None = None, maximum: float | None = None,
            exclusive_minimum: float | None = None, exclusive_maximum: float | None = None,
            choices: tuple | None = None, pattern: str | None = None, min_length: int | None = None) -> Any:
    """A settings field with its default and its allowed values (named as in JSON Schema)."""
    bounds = {"minimum": minimum, "maximum": maximum, "exclusiveMinimum": exclusive_minimum,
              "exclusiveMaximum": exclusive_maximum, "enum": choices, "pattern": pattern, "minLength": min_length}
    return field(default=default, metadata={k: v for k, v in bounds.items() if v is not None})


def _describe_type(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to the field type ``hint`` (int, float, bool, str, tuple[X, ...],
    X | None), or LvmbenchError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # e.g. bool | str: the first type the value is
            for hint in inner:
                try:
                    return _check_value(value, hint, where)
                except LvmbenchError:
                    continue
            raise LvmbenchError(f"{where}: expected {' or '.join(map(_describe_type, inner))}, got {value!r}")
        return _check_value(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise LvmbenchError(f"{where}: expected a list, got {value!r}")
        return tuple(_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}[hint]
    if not ok(value):
        raise LvmbenchError(f"{where}: expected {_describe_type(hint)}, got {value!r}")
    if hint is float:
        if not math.isfinite(value):
            raise LvmbenchError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    return value


def leaves(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every leaf of a nested structure of mappings and lists, with its path
    (``where.key[0]``), for checks that hold everywhere in a config or a spec."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from leaves(item, f"{where}[{i}]")
    else:
        yield where, value


def check_finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities anywhere in a nested structure of mappings and lists (YAML
    writes them ``.nan`` and ``.inf``, JSON ``NaN`` and ``Infinity``): no number of a config
    or a spec means anything when it is not finite."""
    for at, leaf in leaves(value, where):
        if isinstance(leaf, float) and not math.isfinite(leaf):
            raise LvmbenchError(f"{at}: expected a finite number, got {leaf!r}")


def _check_range(value: Any, meta: dict, where: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None:
            continue
        if isinstance(v, (str, bool)):
            if "pattern" in meta and isinstance(v, str) and not re.fullmatch(meta["pattern"], v):
                raise LvmbenchError(f"{where} must match {meta['pattern']}, got {v!r}")
            if isinstance(v, str) and len(v) < meta.get("minLength", 0):
                raise LvmbenchError(f"{where} must not be empty")
            if "enum" in meta and v not in meta["enum"]:
                raise LvmbenchError(f"{where} must be one of {', '.join(map(str, meta['enum']))}, got {v!r}")
            continue
        if "enum" in meta and v not in meta["enum"]:
            raise LvmbenchError(f"{where} must be one of {', '.join(map(str, meta['enum']))}, got {v!r}")
        for key, bad, word in (("minimum", lambda a, b: a < b, ">="), ("maximum", lambda a, b: a > b, "<="),
                               ("exclusiveMinimum", lambda a, b: a <= b, ">"),
                               ("exclusiveMaximum", lambda a, b: a >= b, "<")):
            if key in meta and bad(v, meta[key]):
                raise LvmbenchError(f"{where} must be {word} {meta[key]}, got {v!r}")


class Settings:
    """Base of the settings dataclasses: generic checks from the field metadata, plus
    :meth:`check` for rules that tie fields together."""

    def check(self, where: str) -> None:
        """Cross-field rules (none by default)."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def build_settings(cls: type, values: dict | None, where: str):
    """Instantiate a settings dataclass from a mapping: unknown keys, wrong types, NaN or
    infinite numbers and values outside the declared ranges are refused with one line."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise LvmbenchError(f"{where}: expected a mapping of settings, got {values!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = set(values) - set(names)
    if unknown:
        unknown = sorted(map(str, unknown))
        raise LvmbenchError(f"{where}: unknown key(s) {unknown}{did_you_mean(unknown[0], names)}; "
                            f"allowed: {sorted(names)}")
    checked = {}
    for f in fields(cls):
        if f.name in values:
            checked[f.name] = _check_value(values[f.name], hints[f.name], f"{where}.{f.name}")
            _check_range(checked[f.name], f.metadata, f"{where}.{f.name}")
    obj = cls(**checked)
    obj.check(where)
    return obj


def defaults(cls: type) -> dict:
    """Each field's default (for the schema and README agreement test)."""
    return {f.name: (list(f.default) if isinstance(f.default, tuple) else f.default)
            for f in fields(cls) if f.default is not MISSING}


@dataclass(frozen=True)
class WorkflowSettings(Settings):
    """Where the workflow writes, finds data and runs its jobs: the top-level keys that are
    neither part of a cell nor of a measurement."""

    results: str = setting("results", min_length=1)  # output directory for runs, tables, figures, logs
    data_dir: str | None = setting(None, min_length=1)  # None = $LVMBENCH_DATA, else ~/.cache/lvmbench
    device: str = setting("auto", pattern=DEVICE)  # torch device of the run jobs
    threads: int = setting(1, minimum=1)  # CPU threads per train/evaluate/gradvar/amortize job
    gpu: int = setting(1, minimum=0)  # GPUs each such job requests (Snakemake resource gpu)
    bundle: int = setting(16, minimum=1)  # most cells (equal but for the seed) one train job trains together
    compile: bool | str = setting("auto", choices=("auto", True, False))  # torch.compile the training step
    container: str | None = setting(None, min_length=1)  # image of every job with --sdm apptainer
    train_runtime: str = setting("12h", pattern=r"^[0-9]+(\.[0-9]+)?(s|m|h|d)$")  # a train job's time limit, with units
    train_mem_mb: int = setting(8000, minimum=1)  # a train job's memory (MB)

    def check(self, where: str) -> None:
        """The results directory is never the file system root (``results: /``, or a path
        built from an unset variable such as ``$UNSET/``)."""
        resolved = os.path.realpath(self.results)
        if os.path.dirname(resolved) == resolved:
            raise LvmbenchError(f"{where}.results: {self.results!r} is the file system root; name a directory "
                                f"for runs, tables, figures and logs (default 'results')")


@dataclass(frozen=True)
class TrainSettings(Settings):
    """Optimisation of one cell (Adam; Burda et al. use eps=1e-4, batch 20)."""

    steps: int = setting(1000, minimum=1)  # optimiser steps; ignored by schedule=burda, whose stages set the length
    batch_size: int = setting(20, minimum=1)
    lr: float = setting(1e-3, exclusive_minimum=0)
    adam_eps: float = setting(1e-4, minimum=0)
    adam_beta1: float = setting(0.9, minimum=0, exclusive_maximum=1)
    adam_beta2: float = setting(0.999, minimum=0, exclusive_maximum=1)
    schedule: str = setting("constant", choices=("constant", "cosine", "burda"))  # burda: lr * 10^(-i/7) for 3^i epochs
    burda_stages: int = setting(8, minimum=1)  # 8 stages = Burda's 3280 epochs
    checkpoint_every: int = setting(500, minimum=1)  # steps between resumable checkpoints
    log_every: int = setting(50, minimum=1)  # steps per row of train.csv
    snapshots: int = setting(2, minimum=1)  # parameter snapshots for gradvar, evenly spaced incl. start and end


@dataclass(frozen=True)
class EvalSettings(Settings):
    """Large-K evaluation (Burda et al.: L_5000 on the whole test set)."""

    K_eval: int = setting(5000, minimum=1)
    k_grid: tuple[int, ...] = setting((1, 5, 50, 500, 5000), minimum=1)  # each k must divide K_eval
    batch_size: int = setting(100, minimum=1)  # test points per pass
    max_samples: int = setting(200_000, minimum=1)  # samples x test points held at once (memory bound)
    n_test: int = setting(0, minimum=0)  # 0 = the whole test set, else its first n_test points
    active_units_n: int = setting(500, minimum=1)  # first training images for active units (Burda)
    ordering_threshold: float = setting(3.0, exclusive_minimum=0)  # a violation is z < -threshold SEs
    seed: int = setting(0, minimum=0, maximum=SEED_MAX)

    def check(self, where: str) -> None:
        bad = [k for k in self.k_grid if self.K_eval % k]
        if bad or not self.k_grid:
            raise LvmbenchError(f"{where}.k_grid: every k must be a positive divisor of K_eval={self.K_eval}; "
                                f"not {bad}")


@dataclass(frozen=True)
class AISSettings(Settings):
    """Annealed importance sampling and BDMC in evaluation (:mod:`lvmbench.measure.ais`;
    Neal 2001, Wu et al. 2017, Grosse et al. 2015): continuous-latent models only."""

    temperatures: int = setting(1000, minimum=1)  # T intermediate distributions
    chains: int = setting(16, minimum=1)  # independent AIS chains per point (Wu et al. 2017: 16)
    schedule: str = setting("sigmoid", choices=("sigmoid", "geometric"))  # spacing of beta_0 = 0 .. beta_T = 1
    start: str = setting("encoder", choices=("encoder", "prior"))  # r(z): anneal from q(z|x) or p(z)
    leapfrog_steps: int = setting(10, minimum=1)  # per HMC transition (Wu et al. 2017: 10)
    step_size: float = setting(0.05, exclusive_minimum=0)  # initial HMC step size of the tuning pass
    target_accept: float = setting(0.65, exclusive_minimum=0, exclusive_maximum=1)  # HMC acceptance sought
    tune_chains: int = setting(4, minimum=1)  # chains of the step-size tuning pass
    n_test: int = setting(100, minimum=0)  # the first n_test evaluated test points; 0 = all of them
    batch_size: int = setting(100, minimum=1)  # points annealed at once (x chains states held)
    bdmc_points: int = setting(0, minimum=0)  # points simulated from the model for BDMC; 0 = no BDMC


@dataclass(frozen=True)
class GradvarSettings(Settings):
    """Gradient-variance measurement at each training snapshot, or at the exact optimum."""

    draws: int = setting(100, minimum=2)  # independent gradient draws M
    batch_size: int = setting(32, minimum=1)  # minibatch of training points, drawn once
    estimators: tuple[str, ...] = setting(())  # empty = every valid estimator in the registry
    at: str = setting("snapshots", choices=("snapshots", "optimum"))  # where: training snapshots, or exact optimum
    noise: float = setting(0.01, minimum=0)  # at optimum: std of the Gaussian noise added to every parameter
    max_samples: int = setting(200_000, minimum=1)  # draws x batch x K samples held at once (memory bound)
    seed: int = setting(0, minimum=0, maximum=SEED_MAX)


@dataclass(frozen=True)
class AmortizeSettings(Settings):
    """Per-datapoint inference and the amortization gap (:mod:`lvmbench.measure.amortization`)."""

    n_test: int = setting(100, minimum=0)  # the first n_test test points; 0 = all
    steps: int = setting(300, minimum=1)  # Adam steps per point
    lr: float = setting(1e-2, exclusive_minimum=0)  # Adam learning rate
    K: int | None = setting(None, minimum=1)  # samples per step; None = the run's K
    K_eval: int | None = setting(None, minimum=1)  # samples for the bound; None = smallest multiple of K >= 1000
    objective: str | None = setting(None, choices=("elbo", "iwae"))  # None = the run's (elbo if not sampled)
    check_every: int = setting(10, minimum=1)  # steps between best-so-far checks
    max_samples: int = setting(200_000, minimum=1)  # samples x points held at once (memory bound)
    seed: int = setting(0, minimum=0, maximum=SEED_MAX)


@dataclass(frozen=True)
class Cell:
    """The training spec of one cell: everything that identifies a trained model, nothing else."""

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

    @property
    def id(self) -> str:
        """``<experiment>/<dataset>/<model>/<objective>/K<K>/<estimator>/seed<seed>``: the run
        directory below ``runs/``."""
        return "/".join([self.experiment, self.dataset, self.model, self.objective, f"K{self.K}", self.estimator,
                         f"seed{self.seed}"])

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> "Cell":
        if not isinstance(d, dict):
            raise LvmbenchError(f"cell: expected a mapping of the training spec, got {type(d).__name__}")
        d = dict(d)
        for axis in ("model", "objective", "estimator"):  # the registry name defaults to the label
            if not d.get(f"{axis}_name") and axis in d:
                d[f"{axis}_name"] = d[axis]
        d["train"] = build_settings(TrainSettings, d.get("train"), "train")
        names = {f.name for f in fields(cls)}
        if set(d) - names:
            raise LvmbenchError(f"cell: unknown key(s) {sorted(set(d) - names)}")
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if required - set(d):
            raise LvmbenchError(f"cell: missing key(s) {sorted(required - set(d))}")
        rules = {**{k: (str, {"pattern": LABEL}) for k in ("experiment", "dataset", "model", "objective", "estimator",
                                                           "model_name", "objective_name", "estimator_name")},
                 "K": (int, {"minimum": 1}), "seed": (int, {"minimum": 0, "maximum": SEED_MAX})}
        for key, (hint, meta) in rules.items():
            _check_range(_check_value(d[key], hint, f"cell.{key}"), meta, f"cell.{key}")
        for key in ("dataset_options", "model_options", "objective_options", "estimator_options"):
            if not isinstance(d.get(key, {}), dict):
                raise LvmbenchError(f"cell.{key}: expected a mapping of options, got {d[key]!r}")
            check_finite(d.get(key, {}), f"cell.{key}")
        return cls(**d)
