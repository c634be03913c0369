"""Plugins: entries that other packages declare as entry points join the registries, pass
the same checks as the built-in ones, and run through the workflow beside them.

The plugin package is built from the code blocks of docs/extending.md, so the page is
tested too: installed into the running environment (offline, no build isolation), listed
by ``lvmbench list``, and run through the ``.test`` DAG with its estimator beside the
built-in ones and its model on its dataset; uninstalled afterwards.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lvmbench import registry
from lvmbench.data.datasets import _check_dataset
from lvmbench.errors import LvmbenchError
from lvmbench.estimators import CAPABILITIES, ESTIMATORS, _check_estimator
from lvmbench.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "extending.md"
TINY_CONFIG = ROOT / ".test" / "config" / "config.yaml"


def plugin_files(docs: Path = DOCS) -> dict[str, str]:
    """The plugin package of docs/extending.md: every fenced block whose info string names a
    file (```python lvmbench_demo.py), appended in order per file."""
    files: dict[str, str] = {}
    for path, body in re.findall(r"```\w+ (\S+)\n(.*?)```", docs.read_text(), re.S):
        files[path] = files.get(path, "") + ("\n\n" if path in files else "") + body
    return files


# ---------------------------------------------------------------------------------------
# the registry's side, with entry points faked in-process
# ---------------------------------------------------------------------------------------
@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Write a module ``name`` with ``source`` on sys.path and fake ``entry_points`` of group
    ``lvmbench.test`` naming objects in it (``entries``: name -> object in the module)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name: str, source: str, entries: dict[str, str]) -> None:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)  # a module of that name from another test
        eps = [EntryPoint(ep_name, f"{name}:{obj}", "lvmbench.test") for ep_name, obj in entries.items()]
        monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == "lvmbench.test" else [])

    return make


def estimators_with_plugins() -> Registry:
    """A fresh estimator registry with the built-in checks and the fake plugin group."""
    return Registry("estimator", capabilities=CAPABILITIES, check=_check_estimator, plugins="lvmbench.test")


GOOD = plugin_files()["lvmbench_demo.py"]


def test_docs_plugin_loads_lazily_and_is_checked(plugin_module):
    plugin_module("demo_ok", GOOD, {"score_loo": "ScoreLOO"})
    reg = estimators_with_plugins()
    assert reg._plugins_loaded is False  # nothing is imported before the first lookup
    assert "score_loo" in reg and reg.names() == ["score_loo"]
    entry = reg["score_loo"]
    assert entry.obj.__name__ == "ScoreLOO" and entry.origin == "an unknown package"
    assert entry.capabilities()["objectives"] == ("elbo", "iwae")


@pytest.mark.parametrize("source, entry, words", [
    (GOOD + "\nclass Bad(ScoreLOO):\n    objectives = ('iwea',)\n", "Bad",
     ["plugin estimator 'mine'", "demo_bad:Bad", "refused", "objectives must name registered objectives", "iwea"]),
    (GOOD + "\nclass Bad(ScoreLOO):\n    min_K = 0\n", "Bad", ["refused", "min_K"]),
    (GOOD + "\nclass Bad:\n    pass\n", "Bad", ["refused", "does not declare requires_rsample"]),
    (GOOD + "\nimport not_a_module_anywhere\n", "ScoreLOO",
     ["plugin estimator 'mine'", "cannot be loaded", "ModuleNotFoundError", "not_a_module_anywhere"]),
    (GOOD, "Missing", ["cannot be loaded", "AttributeError", "Missing"]),
])
def test_wrong_plugin_is_refused_with_one_line(plugin_module, source, entry, words):
    plugin_module("demo_bad", source, {"mine": entry})
    with pytest.raises(LvmbenchError) as info:
        estimators_with_plugins().names()
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def test_plugin_may_not_take_a_builtin_name(plugin_module):
    plugin_module("demo_clash", GOOD, {"reparam": "ScoreLOO"})
    reg = estimators_with_plugins()
    reg.register("reparam")(ESTIMATORS["reparam"].obj)
    with pytest.raises(LvmbenchError, match=r"estimator 'reparam' registered twice \(lvmbench and an unknown"):
        reg.names()


def test_plugin_dataset_is_checked(plugin_module):
    plugin_module("demo_data", GOOD, {"ring": "RING", "bad": "load_ring"})
    datasets = Registry("dataset", capabilities=("kind", "binarize", "dim", "offline"), check=_check_dataset,
                        plugins="lvmbench.test")
    with pytest.raises(LvmbenchError, match="plugin dataset 'bad'.*does not declare kind"):
        datasets.names()
    plugin_module("demo_data", GOOD.replace('kind="continuous"', 'kind="images"'), {"ring": "RING"})
    datasets = Registry("dataset", capabilities=("kind", "binarize", "dim", "offline"), check=_check_dataset,
                        plugins="lvmbench.test")
    with pytest.raises(LvmbenchError, match="kind must be one of continuous, binary_image, got 'images'"):
        datasets.names()


# ---------------------------------------------------------------------------------------
# a real package, installed, listed and run through the workflow
# ---------------------------------------------------------------------------------------
def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """docs/extending.md's package, pip-installed into this environment for the module."""
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    package = tmp_path_factory.mktemp("lvmbench-demo")
    for name, text in plugin_files().items():
        (package / name).write_text(text)
    proc = pip("install", "--no-build-isolation", "--no-deps", "--no-index", str(package))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        yield package
    finally:
        pip("uninstall", "-y", "lvmbench-demo")


@pytest.mark.slow
def test_installed_plugin_is_listed(installed_plugin):
    proc = subprocess.run(["lvmbench", "list"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("score_loo", "factor", "ring"):  # each entry's lines: its name, then indented ones
        entry = re.search(rf"^  {name} .*?(?=^  \S|^\S|\Z)", proc.stdout, re.M | re.S)
        assert entry and "plugin from: lvmbench-demo 0.1.0" in entry[0], proc.stdout
    assert "plugin from" not in re.search(r"^  reparam .*?(?=^  \S)", proc.stdout, re.M | re.S)[0]
    listing = json.loads(subprocess.run(["lvmbench", "list", "--json"], capture_output=True, text=True).stdout)
    assert listing["models"]["factor"]["options"] == {"z_dim": 2, "hidden": 32}
    assert listing["datasets"]["ring"]["options"] == {"n_train": 1000, "n_test": 500, "noise": 0.1}
    assert listing["estimators"]["score_loo"]["from"] == "lvmbench-demo 0.1.0"


@pytest.mark.slow
def test_installed_plugin_runs_through_the_test_dag(installed_plugin, tmp_path):
    """The .test config with the plugin's estimator beside the built-in ones on the
    linear-Gaussian toy, and the plugin's model on the plugin's dataset beside a built-in
    model: every cell trains, evaluates (bound ordering included) and reaches the tables."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["experiments"]["snr"]["estimators"].append("score_loo")
    config["experiments"]["plugin"] = {
        "datasets": ["ring"], "dataset_options": {"ring": {"n_train": 64, "n_test": 64}},
        "models": {"fa": {"model": "factor", "z_dim": 1, "hidden": 8}, "linear_gaussian": {}},
        "objectives": ["iwae"], "K": [2], "estimators": ["reparam", "score_loo"]}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run(["snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                           "--cores", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "results" / "tables" / "summary.csv")
    assert (summary.status == "ok").all() and summary.ordering_passed.all(), summary[["cell", "status"]]
    snr = summary[summary.experiment == "snr"]
    assert set(snr.estimator) == {"reparam", "stl", "score_loo"}
    plugin = summary[summary.experiment == "plugin"]
    assert set(zip(plugin.model, plugin.estimator)) == {("fa", "reparam"), ("fa", "score_loo"),
                                                        ("linear_gaussian", "reparam"),
                                                        ("linear_gaussian", "score_loo")}
    gradvar = pd.read_csv(tmp_path / "results" / "tables" / "gradvar.csv")
    assert "score_loo" in set(gradvar.estimator)  # measured beside the built-ins at the same snapshots
