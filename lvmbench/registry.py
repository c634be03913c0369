"""Registries of named objects whose capabilities are declared on the objects themselves.

A capability is a property of the thing it describes, as ``has_rsample`` is of a torch
distribution: a model class says which kind of latent it has, an estimator class what it
needs and when it is biased, an objective class its options. A :class:`Registry` maps
names to such objects and reads the declarations back (:meth:`Entry.capabilities`) for
``lvmbench list``; it never holds a copy of them. Which combinations can run is decided
above the registries, by the planner (:mod:`lvmbench.grid`).

This module depends on nothing else in lvmbench but its error type.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from lvmbench.errors import LvmbenchError

T = TypeVar("T")


def describe(obj: Any, name: str) -> Any:
    """The declared value of ``obj.name``; for a property, or a method, its docstring's first
    line (the condition in words, e.g. when an estimator is biased)."""
    static = inspect.getattr_static(obj, name)
    if isinstance(static, (property, classmethod, staticmethod)) or inspect.isfunction(static):
        doc = inspect.getdoc(getattr(static, "__func__", static)) or ""
        return doc.splitlines()[0] if doc else name
    return getattr(obj, name)


def options_of(func: Callable, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The keyword options of a constructor or loader with their defaults (``skip``: positional
    inputs such as ``x_dim``)."""
    params = inspect.signature(func).parameters.values()
    return {p.name: p.default for p in params
            if p.name not in ("self", *skip) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is not p.empty}


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object and the registry that knows which of its attributes are capabilities."""

    name: str
    obj: T
    registry: "Registry[T]"

    @property
    def doc(self) -> str:
        """The first paragraph of the entry's docstring (or of its ``doc`` text), on one line."""
        text = self.obj.doc if isinstance(getattr(self.obj, "doc", None), str) else inspect.getdoc(self.obj)
        return " ".join((text or "").strip().split("\n\n")[0].split())

    def capabilities(self) -> dict[str, Any]:
        """Each declared capability, as declared (conditions in words)."""
        return {cap: describe(self.obj, cap) for cap in self.registry.capabilities}

    def options(self) -> dict[str, Any]:
        """The entry's options and their defaults."""
        return self.registry.options(self.obj)


class Registry(Generic[T]):
    """Name -> object, filled by a decorator.

    ``capabilities`` names the attributes every entry declares; ``check(name, obj)`` raises
    :class:`LvmbenchError` when an entry declares them wrongly; ``options(obj)`` lists an
    entry's options with their defaults.

    >>> MODELS = Registry("model", capabilities=("latent",))
    >>> @MODELS.register("gmm")
    ... class GMM:
    ...     latent = "discrete"
    """

    def __init__(self, kind: str, capabilities: Sequence[str] = (),
                 check: Callable[[str, T], None] | None = None,
                 options: Callable[[T], dict[str, Any]] | None = None):
        self.kind = kind
        self.capabilities = tuple(capabilities)
        self._check = check
        self.options = options or (lambda obj: {})
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Register under ``name`` after checking the entry's declarations."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise LvmbenchError(f"{self.kind} {name!r} registered twice")
            missing = [cap for cap in self.capabilities if not hasattr(obj, cap)]
            if missing:
                raise LvmbenchError(f"{self.kind} {name!r} does not declare {', '.join(missing)}")
            if self._check is not None:
                self._check(name, obj)
            self._entries[name] = Entry(name, obj, self)
            return obj

        return add

    def __getitem__(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise LvmbenchError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)
