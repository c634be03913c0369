"""Registries of named objects whose capabilities are declared on the objects themselves.

A capability is a property of the thing it describes, as ``has_rsample`` is of a torch
distribution: a model class says which kind of latent it has, an estimator class what it
needs and when it is biased, an objective class its options. A :class:`Registry` maps
names to such objects and reads the declarations back (:meth:`Entry.capabilities`) for
``lvmbench list``; it never holds a copy of them. Which combinations can run is decided
above the registries, by the planner (:mod:`lvmbench.grid`).

A registry with a ``plugins`` group also holds the entries other installed packages
declare as Python entry points in that group (``lvmbench.models``, ``lvmbench.estimators``,
``lvmbench.datasets``): the entry point's name is the registry name and its object the
entry. They are loaded once, lazily, before the first lookup, so every process that
looks a name up (the planner, each job, ``lvmbench list``) sees them; they pass the same
checks as the built-in entries (docs/extending.md).

This module depends on nothing else in lvmbench but its error type.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

from lvmbench.errors import LvmbenchError

T = TypeVar("T")

#: where an entry comes from when it is lvmbench's own
BUILTIN = "lvmbench"


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the choice closest to a mistyped ``name``, else ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    origin: str = BUILTIN  # "lvmbench", or the plugin's distribution and version

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
    """Name -> object, filled by a decorator and, with ``plugins``, by entry points.

    ``capabilities`` names the attributes every entry declares; ``check(name, obj)`` raises
    :class:`LvmbenchError` when an entry declares them wrongly; ``options(obj)`` lists an
    entry's options with their defaults; ``plugins`` is the entry-point group whose entries
    join the registry before its first lookup.

    >>> MODELS = Registry("model", capabilities=("latent",))
    >>> @MODELS.register("gmm")
    ... class GMM:
    ...     latent = "discrete"
    """

    def __init__(self, kind: str, capabilities: Sequence[str] = (),
                 check: Callable[[str, T], None] | None = None,
                 options: Callable[[T], dict[str, Any]] | None = None, plugins: str | None = None):
        self.kind = kind
        self.capabilities = tuple(capabilities)
        self._check = check
        self.options = options or (lambda obj: {})
        self.plugins = plugins
        self._entries: dict[str, Entry[T]] = {}
        self._plugins_loaded = plugins is None

    def register(self, name: str, origin: str = BUILTIN) -> Callable[[T], T]:
        """Register under ``name`` after checking the entry's declarations."""

        def add(obj: T) -> T:
            if name in self._entries:
                first = self._entries[name].origin
                raise LvmbenchError(f"{self.kind} {name!r} registered twice ({first} and {origin})")
            missing = [cap for cap in self.capabilities if not hasattr(obj, cap)]
            if missing:
                raise LvmbenchError(f"{self.kind} {name!r} does not declare {', '.join(missing)}")
            if self._check is not None:
                self._check(name, obj)
            self._entries[name] = Entry(name, obj, self, origin)
            return obj

        return add

    def _load_plugins(self) -> None:
        """Register every entry point of the ``plugins`` group, once; a plugin that cannot be
        imported or declares its capabilities wrongly stops with one line naming it."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # first, so that a plugin may look names up while it loads
        for ep in sorted(entry_points(group=self.plugins), key=lambda ep: ep.name):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown package"
            where = f"plugin {self.kind} {ep.name!r} ({ep.value}, from {dist})"
            try:
                obj = ep.load()
            except Exception as err:  # whatever the plugin's import raises
                raise LvmbenchError(f"{where} cannot be loaded: {type(err).__name__}: {err}") from None
            try:
                self.register(ep.name, origin=dist)(obj)
            except LvmbenchError as err:
                raise LvmbenchError(f"{where} is refused: {err}") from None

    @property
    def entries(self) -> dict[str, Entry[T]]:
        """Every entry by name, the plugins' included."""
        self._load_plugins()
        return self._entries

    def unknown(self, name: object) -> str:
        """The message for a name that is not registered: the closest name and every choice."""
        names = self.entries
        return f"unknown {self.kind} {name!r}{did_you_mean(name, names)}; choose one of: {', '.join(names)}"

    def __getitem__(self, name: str) -> Entry[T]:
        try:
            return self.entries[name]
        except (KeyError, TypeError):
            raise LvmbenchError(self.unknown(name)) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self.entries.values()))

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return list(self.entries)
