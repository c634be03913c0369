"""The package's layout: imports run one way, from a layer to those below it, with no cycle
anywhere; module-level and function-level imports count alike, so no import inside a
function can hide a cycle. The registry and the error type depend on nothing, and no
measurement or report imports the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lvmbench"

#: the layers, bottom up (lvmbench/__init__.py describes them); a module may import its own
#: layer and those below
LAYERS = [
    ["errors"],
    ["registry", "io", "stats", "rng", "noise", "progress", "settings", "devices", "configfile", "provenance"],
    ["data"],
    ["models", "objectives", "report.paper", "report.claims"],
    ["estimators", "exact"],
    ["grid"],
    ["runs"],
    ["train", "measure"],
    ["report.aggregate", "report.plots"],
    ["cli", "__main__"],
]


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The lvmbench modules ``name`` imports anywhere in its file (relative to the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([p for p in up if p] + ([base] if base else []))
            elif base == "lvmbench" or base.startswith("lvmbench."):
                base = base.removeprefix("lvmbench").lstrip(".")
            else:
                continue
            targets = [base, *(f"{base}.{a.name}".strip(".") for a in node.names)]
        for t in targets:
            t = t.removeprefix("lvmbench").lstrip(".") if t.startswith("lvmbench") else t
            if t in known and t != name:
                found.add(t)
    return found


GRAPH = {name: imports(name, path, set(modules())) for name, path in modules().items()}


def layer(name: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(name == n or name.startswith(n + ".") for n in names):
            return i
    if name in ("", "report"):  # the package and a namespace-only __init__
        return len(LAYERS)
    raise AssertionError(f"lvmbench.{name} is in no layer of tests/test_layout.py")


def test_every_module_has_a_layer():
    for name in GRAPH:
        layer(name)


def test_no_import_cycle():
    cycles, seen, stack = [], set(), []

    def visit(m):
        if m in stack:
            cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(GRAPH[m]):
            visit(t)
        stack.pop()

    for m in sorted(GRAPH):
        visit(m)
    assert not cycles, cycles


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_run_downwards(name):
    upward = sorted(t for t in GRAPH[name] if layer(t) > layer(name) and t not in ("", "report"))
    assert not upward, f"lvmbench.{name} imports {upward} from a layer above it"


def test_leaves_and_the_trainer():
    assert GRAPH["errors"] == set()
    assert GRAPH["registry"] <= {"errors"}
    for name, targets in GRAPH.items():
        if name.startswith(("measure", "report")):
            assert "train" not in targets, f"lvmbench.{name} imports the trainer"
