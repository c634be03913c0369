"""Registries of models, objectives and gradient estimators.

Every entry declares its capabilities (what kind of latent a model has, which
objectives an estimator supports, a minimum K, ...). :func:`why_invalid` reads
only those declarations, so the command line, the trainer and the Snakemake
pipeline agree on which combinations run, and every refusal has a one-line
reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar


class LvmbenchError(Exception):
    """A user-facing error: its message is one line and needs no traceback."""


T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its declared capabilities."""

    name: str
    obj: T
    doc: str
    caps: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> entry, with a decorator for registration.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("gmm", latent="discrete")
    ... class GMM: ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, doc: str | None = None, **caps: Any) -> Callable[[T], T]:
        """Register under ``name``; ``doc`` defaults to the first line of the object's docstring."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            lines = (doc or getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, obj, lines[0] if lines else "", caps)
            return obj

        return add

    def __getitem__(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise LvmbenchError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def names(self) -> list[str]:
        return list(self._entries)


def why_invalid(
    model: str,
    objective: str,
    K: int,
    estimator: str,
    dataset: str | None = None,
    objective_options: dict | None = None,
) -> str | None:
    """Return why a (dataset, model, objective, K, estimator) cell cannot run, or None.

    The reason is read from the registries' declarations alone; unknown names
    raise :class:`LvmbenchError`.
    """
    from lvmbench.data import DATASETS
    from lvmbench.estimators import ESTIMATORS
    from lvmbench.models import MODELS
    from lvmbench.objectives import OBJECTIVES, make_objective

    if not isinstance(K, int) or isinstance(K, bool) or K < 1:
        raise LvmbenchError(f"K must be an integer >= 1, got {K!r}")
    m = MODELS[model].caps
    o_entry = OBJECTIVES[objective]
    e = ESTIMATORS[estimator].caps
    if dataset is not None:
        if dataset not in DATASETS:
            raise LvmbenchError(
                f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}"
            )
        kind = DATASETS[dataset].kind
        if kind not in m["data"]:
            return f"model {model} takes {'/'.join(m['data'])} data, dataset {dataset} is {kind}"
    o = o_entry.caps
    if o["needs_exact"] and not m["exact"]:
        return f"objective {objective} needs an exact log p(x); model {model} has none"
    if objective not in e["objectives"]:
        return f"estimator {estimator} supports objectives {', '.join(e['objectives'])}, not {objective}"
    if e["requires_rsample"] and not m["reparameterizable"]:
        return f"estimator {estimator} needs reparameterizable latents; model {model} has {m['latent']} latents"
    if e["needs_model"] and not any(m[cap] for cap in e["needs_model"]):
        return f"estimator {estimator} needs a model that is {' or '.join(e['needs_model'])}; {model} is not"
    if m["deterministic"] and "straight_through" not in e["needs_model"]:
        return f"model {model} has a deterministic (quantizing) encoder; only straight-through estimators train it"
    if m["deterministic"] and K != 1:
        return f"model {model} has a deterministic encoder, so only K=1 runs"
    if K < e["min_K"]:
        return f"estimator {estimator} needs K >= {e['min_K']}, got K={K}"
    if e["max_K"] is not None and K > e["max_K"]:
        return f"estimator {estimator} uses no samples, so only K={e['max_K']} runs"
    return make_objective(objective, **(objective_options or {})).why_invalid(K)
