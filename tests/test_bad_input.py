"""A corpus of malformed inputs: each gives one clear message, no traceback, and for a
config, no job starts.

Config cases go through `lvmbench plan FILE` (in-process, exit 2, one line on stderr) and
through `snakemake -n` on a working directory whose config/config.yaml is the file (all
dry runs start at once in a module fixture, so the corpus costs a few seconds of wall
time per core). tests/test_cli.py's eight cases (BAD) are part of the plan corpus here
and run through Snakemake there. Data-file cases go through `lvmbench prepare` with
LVMBENCH_OFFLINE=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_cli import BAD, GOOD, assert_one_clear_line, edited
from test_pipeline import SNAKEFILE

from lvmbench.cli import main


@dataclass
class Case:
    """A config, as a mapping or raw file text; the words its message must contain."""

    config: dict | str
    words: list[str]  # in lvmbench plan's line and, unless workflow_words, Snakemake's
    workflow_words: list[str] | None = None  # Snakemake's own message (before the config reaches the workflow)
    snakemake: bool = True  # False: tests/test_cli.py already runs it through Snakemake

    def text(self) -> str:
        return self.config if isinstance(self.config, str) else yaml.safe_dump(self.config, sort_keys=False)


def exp(**axes):
    return edited(lambda c, e: e.update(axes))


def top(**keys):
    return edited(lambda c, e: c.update(keys))


CORPUS: dict[str, Case] = {
    **{f"test_cli: {name}": Case(config, words, snakemake=False) for name, (config, words) in BAD.items()},
    "unknown objective": Case(exp(objectives=["elbow"]), ["elbow"]),
    "unknown objective option": Case(exp(objectives={"iwae": {"temperature": 2}}), ["temperature"]),
    "K as a string": Case(exp(K=["2"]), ["K", "2"]),
    "negative learning rate": Case(top(train={"lr": -0.1}), ["lr", "-0.1"]),
    "zero steps": Case(top(train={"steps": 0}), ["steps", "0"]),
    "unknown schedule": Case(top(train={"schedule": "linear"}), ["schedule", "linear"]),
    "k_grid not dividing K_eval": Case(top(eval={"K_eval": 10, "k_grid": [1, 3]}), ["k_grid", "3"]),
    "K_eval zero": Case(top(eval={"K_eval": 0, "k_grid": [1]}), ["K_eval", "0"]),
    "one gradvar draw": Case(top(gradvar={"draws": 1}), ["draws", "1"]),
    "gradvar at an unknown place": Case(top(gradvar={"at": "end"}), ["at", "end"]),
    "ais on a discrete model": Case(top(ais={"match": {"experiment": "demo"}}), ["ais", "continuous"]),
    "ais selecting no cell": Case(top(ais={"match": {"model": ["vae", "sbn"]}}), ["ais.match", "no cell"]),
    "unknown ais key": Case(top(ais={"match": {"experiment": "demo"}, "temps": 3}), ["temps"]),
    "typo in an experiment key": Case(exp(seed=[1]), ["seed"]),
    "no experiments": Case({"experiments": {}}, ["experiments"]),
    "experiments not a mapping": Case({"experiments": ["demo"]}, ["experiments"]),
    "models an empty list": Case(exp(models=[]), ["models"]),
    "undefined variant": Case({**GOOD, "variant": "huge", "variants": {"short": {"train": {"steps": 3}}}},
                              ["huge", "short"], workflow_words=["variant"]),
    "malformed published row": Case({**GOOD, "published": [{"experiment": "demo"}]}, ["published[0]"],
                                    workflow_words=["published"]),
    "negative seed": Case(exp(seeds=[-1]), ["seeds", "-1"]),
    "device tpu": Case(top(device="tpu"), ["device", "tpu"]),
    "experiment name with a slash": Case({"experiments": {"a/b": GOOD["experiments"]["demo"]}}, ["a/b"]),
    "unknown dataset option": Case(exp(dataset_options={"gmm2d": {"n_points": 3}}), ["n_points"]),
    "unknown model option": Case(exp(models={"gmm": {"layers": 3}}), ["layers"]),
    "empty file": Case("", ["empty"], workflow_words=["Config file must be given as JSON or YAML"]),
    "a YAML list": Case("- demo\n- K\n", ["not a mapping"],
                        workflow_words=["Config file must be given as JSON or YAML"]),
    "not YAML": Case("experiments: [demo\n  K: }\n", ["not valid YAML"],
                     workflow_words=["Config file is not valid JSON or YAML"]),
}
WORKFLOW_ONLY = {  # keys lvmbench plan does not read
    "zero threads": Case(top(threads=0), ["threads", "0"]),
    "negative gpu": Case(top(gpu=-1), ["gpu", "-1"]),
    "empty results path": Case(top(results=""), ["results"]),
}


# ---------------------------------------------------------------------------------------
# lvmbench plan
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CORPUS)
def test_plan_refuses(name, tmp_path, capsys):
    case = CORPUS[name]
    path = tmp_path / "config.yaml"
    path.write_text(case.text())
    code = main(["plan", str(path)])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    line = assert_one_clear_line(subprocess.CompletedProcess([], code, out, err), case.words)
    assert line.startswith("lvmbench plan: error:")


def test_plan_command_line_refuses_a_non_yaml_file(tmp_path):
    """The installed entry point too (the other cases run in-process)."""
    path = tmp_path / "config.yaml"
    path.write_text(CORPUS["not YAML"].text())
    proc = subprocess.run([sys.executable, "-m", "lvmbench", "plan", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert assert_one_clear_line(proc, ["not valid YAML"]).startswith("lvmbench plan: error:")


# ---------------------------------------------------------------------------------------
# snakemake -n
# ---------------------------------------------------------------------------------------
SNAKEMAKE_CASES = {n: c for n, c in {**CORPUS, **WORKFLOW_ONLY}.items() if c.snakemake}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every case's `snakemake -n`, run concurrently (one per core)."""
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")

    def dry_run(name: str):
        work = tmp_path_factory.mktemp("bad")
        (work / "config").mkdir()
        (work / "config" / "config.yaml").write_text(SNAKEMAKE_CASES[name].text())
        cmd = ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(work), "-n"]
        return name, (work, subprocess.run(cmd, capture_output=True, text=True, timeout=120))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(pool.map(dry_run, SNAKEMAKE_CASES))


@pytest.mark.slow
@pytest.mark.parametrize("name", SNAKEMAKE_CASES)
def test_workflow_refuses(name, dry_runs):
    case = SNAKEMAKE_CASES[name]
    work, proc = dry_runs[name]
    out = proc.stdout + proc.stderr
    if case.workflow_words is None:
        assert assert_one_clear_line(proc, case.words).startswith("lvmbench config error:")
    else:  # Snakemake's own message, one 'WorkflowError in file ...' line above it
        assert_one_clear_line(proc, [])
        for word in case.workflow_words:
            assert word in out, out
    assert "rule " not in out  # no job was scheduled
    assert not (work / "results").exists()


# ---------------------------------------------------------------------------------------
# data files: lvmbench prepare, offline
# ---------------------------------------------------------------------------------------
MNIST = "train-images-idx3-ubyte.gz"


@dataclass
class DataCase:
    args: list[str]
    words: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # written under mnist/ in the data dir


DATA_CORPUS: dict[str, DataCase] = {
    "mnist missing offline": DataCase(["mnist"], ["not found", "LVMBENCH_OFFLINE=1", MNIST]),
    "truncated mnist file": DataCase(["mnist"], ["checksum mismatch", MNIST], {MNIST: b"\x1f\x8b\x08\x00" * 64}),
    "empty mnist file": DataCase(["mnist"], ["checksum mismatch", MNIST], {MNIST: b""}),
    "binarized mnist not gzip": DataCase(["binarized_mnist"], ["cannot read", "binarized_mnist_train.amat.gz"],
                                         {"../binarized_mnist/binarized_mnist_train.amat.gz": b"not gzip"}),
    "unknown dataset": DataCase(["mnist6k"], ["mnist6k"]),
    "unknown dataset option": DataCase(["gmm2d", "--options", '{"n_points": 3}'], ["n_points"]),
    "zero training points": DataCase(["gmm2d", "--options", '{"n_train": 0}'], ["n_train", "0"]),
    "options not JSON": DataCase(["gmm2d", "--options", "{n_train: 3"], ["--options"]),
}


@pytest.mark.parametrize("name", DATA_CORPUS)
def test_prepare_refuses(name, tmp_path, monkeypatch, capsys):
    case = DATA_CORPUS[name]
    monkeypatch.setenv("LVMBENCH_OFFLINE", "1")
    for rel, content in case.files.items():
        path = (tmp_path / "mnist" / rel).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    code = main(["prepare", *case.args, "--data-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert assert_one_clear_line(subprocess.CompletedProcess([], code, out, err), case.words) \
        .startswith("lvmbench prepare: error:")
