"""A corpus of malformed inputs: each gives one clear message, no traceback, and for a
config, no job starts and nothing is written.

Config cases go through `lvmbench plan FILE` (in-process, exit 2, one line on stderr) and,
for those marked so, through `snakemake -n` on a working directory whose config/config.yaml
is the file (all dry runs start at once in a module fixture). Both call one validator
(lvmbench.grid.plan), so the Snakemake runs check how its line reaches the user, and the
plan corpus checks every class of bad value. tests/test_cli.py's eight cases (BAD) are part
of the plan corpus here and run through Snakemake there.

The command-line corpus (CLI_CORPUS) runs every subcommand with bad options, bad JSON and
bad output paths against one small trained run: each is refused before any work starts,
and nothing is written. Data-file cases go through `lvmbench prepare` with
LVMBENCH_OFFLINE=1. docs/reliability.md lists the classes.
"""

from __future__ import annotations

import json
import math
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
from lvmbench.data import CHECKSUMS


@dataclass
class Case:
    """A config, as a mapping or raw file text (bytes for text that is not UTF-8); the words
    its message must contain."""

    config: dict | str | bytes
    words: list[str]  # in lvmbench plan's line and Snakemake's
    snakemake: bool = False  # also run it through `snakemake -n`

    def content(self) -> bytes:
        if isinstance(self.config, bytes):
            return self.config
        text = self.config if isinstance(self.config, str) else yaml.safe_dump(self.config, sort_keys=False)
        return text.encode()


def exp(**axes):
    return edited(lambda c, e: e.update(axes))


def top(**keys):
    return edited(lambda c, e: c.update(keys))


def published(**row):
    return {"experiment": "demo", "dataset": "gmm2d", "model": "gmm", "objective": "iwae", "K": 2, "metric": "nll",
            "value": 1.0, "tolerance": 0.5, "source": "a paper", **row}


DEMO = GOOD["experiments"]["demo"]
GOOD_YAML = yaml.safe_dump(GOOD, sort_keys=False)
MNIST5K = {"datasets": ["mnist5k"], "objectives": ["iwae"], "K": [2], "estimators": ["reparam"]}
NAN, INF = math.nan, math.inf

CORPUS: dict[str, Case] = {
    **{f"test_cli: {name}": Case(config, words) for name, (config, words) in BAD.items()},
    # names the registries do not know, options the entries do not take
    "unknown objective": Case(exp(objectives=["elbow"]), ["elbow"], snakemake=True),
    "unknown objective option": Case(exp(objectives={"iwae": {"temperature": 2}}), ["temperature"]),
    "objective option of the wrong type": Case(exp(objectives={"m": {"objective": "miwae", "M": "x"}}), ["M", "x"]),
    "unknown dataset option": Case(exp(dataset_options={"gmm2d": {"n_points": 3}}), ["n_points"]),
    "dataset option of the wrong type": Case(exp(dataset_options={"gmm2d": {"n_train": "10"}}), ["n_train", "10"]),
    "options of a dataset the experiment lacks": Case(exp(dataset_options={"mnist": {}}), ["mnist", "gmm2d"]),
    "unknown model option": Case(exp(models={"gmm": {"layers": 3}}), ["layers"]),
    "model option out of its range": Case(exp(models={"gmm": {"components": 0}}), ["components", "0"]),
    "model option of the wrong type": Case(exp(models={"gmm": {"hidden": "abc"}}), ["gmm"]),
    "unknown estimator option": Case(exp(estimators={"nvil": {"estimator": "score_baseline", "hiden": 3}}),
                                     ["nvil", "hiden"]),
    "estimator option out of its range": Case(exp(estimators={"nvil": {"estimator": "score_baseline",
                                                                       "momentum": 2}}), ["momentum", "2"]),
    "gradvar estimator typo": Case(top(gradvar={"estimators": ["scor"]}), ["gradvar.estimators", "scor"],
                                   snakemake=True),
    # wrong types and shapes
    "K as a string": Case(exp(K=["2"]), ["K", "2"]),
    "seeds empty": Case(exp(seeds=[]), ["seeds"], snakemake=True),
    "datasets empty": Case(exp(datasets=[]), ["datasets"]),
    "models an empty list": Case(exp(models=[]), ["models"]),
    "K repeated": Case(exp(K=[2, 2]), ["K"]),
    "train a list": Case(top(train=[1]), ["train"]),
    "a boolean key given another word": Case(top(compile="sometimes"), ["config.compile", "sometimes"]),
    "dataset_options a list": Case(exp(dataset_options=[1]), ["dataset_options"]),
    "one dataset's options a list": Case(exp(dataset_options={"gmm2d": [1]}), ["gmm2d"]),
    "a variant a list": Case({**GOOD, "variants": {"short": [1]}, "variant": "short"}, ["variants"]),
    "variants a list": Case({**GOOD, "variants": ["short"], "variant": "short"}, ["variants"]),
    "variant a list": Case({**GOOD, "variants": {"short": {}, "smoke": {}}, "variant": ["short", "smoke"]},
                           ["variant", "short"], snakemake=True),
    "k_grid a number": Case(top(eval={"k_grid": 5}), ["k_grid", "5"]),
    "no experiments": Case({"experiments": {}}, ["experiments"]),
    "experiments not a mapping": Case({"experiments": ["demo"]}, ["experiments"]),
    "typo in an experiment key": Case(exp(seed=[1]), ["seed"]),
    # values out of range, NaN and infinities
    "negative learning rate": Case(top(train={"lr": -0.1}), ["lr", "-0.1"]),
    "NaN learning rate": Case(top(train={"lr": NAN}), ["lr", "finite"], snakemake=True),
    "infinite learning rate": Case(top(train={"lr": INF}), ["lr", "finite"]),
    "adam_beta1 of 1": Case(top(train={"adam_beta1": 1}), ["adam_beta1", "1"]),
    "zero steps": Case(top(train={"steps": 0}), ["steps", "0"]),
    "unknown schedule": Case(top(train={"schedule": "linear"}), ["schedule", "linear"]),
    "NaN ordering threshold": Case(top(eval={"ordering_threshold": NAN}), ["ordering_threshold", "finite"]),
    "k_grid not dividing K_eval": Case(top(eval={"K_eval": 10, "k_grid": [1, 3]}), ["k_grid", "3"]),
    "K_eval zero": Case(top(eval={"K_eval": 0, "k_grid": [1]}), ["K_eval", "0"]),
    "one gradvar draw": Case(top(gradvar={"draws": 1}), ["draws", "1"]),
    "NaN objective option": Case(exp(objectives={"c": {"objective": "ciwae", "beta": NAN}}), ["beta", "finite"]),
    "NaN model option": Case({"experiments": {"t": {
        "datasets": ["gaussian_toy"], "models": {"lg": {"model": "linear_gaussian", "q_scale": NAN}},
        "objectives": ["iwae"], "K": [2], "estimators": ["reparam"]}}}, ["q_scale", "finite"]),
    "NaN published value": Case({**GOOD, "published": [published(value=NAN)]}, ["value", "finite"]),
    "gradvar at an unknown place": Case(top(gradvar={"at": "end"}), ["at", "end"]),
    "ais on a discrete model": Case(top(ais={"match": {"experiment": "demo"}}), ["ais", "continuous"]),
    "ais selecting no cell": Case(top(ais={"match": {"model": ["vae", "sbn"]}}), ["ais.match", "no cell"]),
    "unknown ais key": Case(top(ais={"match": {"experiment": "demo"}, "temps": 3}), ["temps"]),
    "negative seed": Case(exp(seeds=[-1]), ["seeds", "-1"]),
    "seed of 2^63": Case(exp(seeds=[2 ** 63]), ["seeds", "9223372036854775808"]),
    "eval seed of 2^63": Case(top(eval={"seed": 2 ** 63}), ["seed", "9223372036854775808"]),
    # sizes: larger than the data, or than memory can hold
    "train batch above the training set": Case(exp(dataset_options={"gmm2d": {"n_train": 10}}),
                                               ["batch_size=20", "10 training points"], snakemake=True),
    "gradvar batch above the training set": Case(
        exp(dataset_options={"gmm2d": {"n_train": 30}}, gradvar={"batch_size": 31}, train={"batch_size": 10}),
        ["gradvar.batch_size=31", "30 training points"]),
    "eval n_test above the test set": Case(exp(dataset_options={"gmm2d": {"n_test": 5}}, eval={"n_test": 6}),
                                           ["n_test=6", "5 test points"]),
    "K too large for memory": Case(exp(K=[10 ** 9]), ["K x batch_size x D", "2,147,483,648"], snakemake=True),
    "a dataset too large for memory": Case(exp(dataset_options={"gmm2d": {"n_train": 10 ** 10}}),
                                           ["training set", "2,147,483,648"]),
    "a model too large for memory": Case(exp(models={"gmm": {"hidden": [10 ** 9]}}), ["parameters"]),
    "eval chunks too large for memory": Case(top(eval={"max_samples": 10 ** 10}), ["max_samples", "2,147,483,648"]),
    # amortization: no cell, or a cell it cannot run
    "amortization selecting no cell": Case({**GOOD, "amortization": {"match": {"model": "vae1"}}}, ["selects no cell"]),
    "amortization of a discrete model": Case({**GOOD, "amortization": {"match": {"experiment": "demo"}}},
                                             ["Categorical", "Gaussian encoder"], snakemake=True),
    "amortization of a 2-layer VAE": Case({"experiments": {"m": {**MNIST5K, "models": {"vae2": {
        "model": "vae", "layers": 2}}}}, "amortization": {"match": {"model": "vae2"}}}, ["vae2", "Gaussian encoder"]),
    "amortization of a flow encoder": Case({"experiments": {"m": {**MNIST5K, "models": {"iaf": {
        "model": "vae", "flow": {"type": "iaf", "layers": 1, "hidden": 8}}}}}, "amortization": {"match": {
            "model": "iaf"}}}, ["iaf", "Gaussian encoder"]),
    "amortization K_eval not a multiple of K": Case({"experiments": {"t": {
        "datasets": ["gaussian_toy"], "models": ["linear_gaussian"], "objectives": ["iwae"], "K": [4],
        "estimators": ["reparam"]}}, "amortization": {"match": {"experiment": "t"}, "K_eval": 10}},
        ["K_eval=10", "group size 4"]),
    "amortization n_test above the test set": Case({"experiments": {"t": {
        "datasets": ["gaussian_toy"], "models": ["linear_gaussian"], "objectives": ["iwae"], "K": [2],
        "estimators": ["reparam"], "dataset_options": {"gaussian_toy": {"n_test": 50}}}},
        "amortization": {"match": {"experiment": "t"}}}, ["n_test=100", "50 test points"]),
    # published numbers of nothing the config declares
    "published row of an unknown experiment": Case({**GOOD, "published": [published(experiment="nope")]},
                                                   ["published[0]", "nope"], snakemake=True),
    "published row of an unknown model": Case({**GOOD, "published": [published(model="vae9")]},
                                              ["published[0]", "vae9"]),
    "malformed published row": Case({**GOOD, "published": [{"experiment": "demo"}]}, ["published[0]"]),
    # variants
    "undefined variant": Case({**GOOD, "variant": "huge", "variants": {"short": {"train": {"steps": 3}}}},
                              ["huge", "short"]),
    # names and paths
    "device tpu": Case(top(device="tpu"), ["device", "tpu"]),
    "experiment name with a slash": Case({"experiments": {"a/b": DEMO}}, ["a/b"]),
    "experiment named ..": Case({"experiments": {"..": DEMO}}, ["'..'"], snakemake=True),
    "experiment named .": Case({"experiments": {".": DEMO}}, ["'.'"]),
    "model label ..": Case(exp(models={"..": {"model": "gmm"}}), ["'..'"]),
    "estimator label starting with a dot": Case(exp(estimators={".s": {"estimator": "score"}}), ["'.s'"]),
    "results at the root": Case(top(results="/"), ["results", "root"], snakemake=True),
    "results built from an unset variable": Case(top(results="//"), ["results", "root"]),
    "empty results path": Case(top(results=""), ["results"], snakemake=True),
    "empty data_dir": Case(top(data_dir=""), ["data_dir"]),
    # files that are not a config
    "empty file": Case("", ["empty"], snakemake=True),
    "a YAML list": Case("- demo\n- K\n", ["not a mapping"]),
    "not YAML": Case("experiments: [demo\n  K: }\n", ["not valid YAML", "line"]),
    "not UTF-8": Case(GOOD_YAML.encode() + b"# \xff\xfe\n", ["not UTF-8", "line"], snakemake=True),
    "a key twice in a train block": Case(GOOD_YAML + "train: {steps: 20, steps: 5}\n", ["steps", "twice", "line"],
                                         snakemake=True),
    "an experiment twice": Case(GOOD_YAML + "  demo:\n    datasets: [gmm2d]\n", ["demo", "twice", "lines 2 and"],
                                snakemake=True),
    "a key twice in JSON text": Case('{"experiments": {}, "experiments": {}}', ["experiments", "twice"]),
}
WORKFLOW_ONLY = {  # keys lvmbench plan does not read
    "zero threads": Case(top(threads=0), ["threads", "0"], snakemake=True),
    "negative gpu": Case(top(gpu=-1), ["gpu", "-1"]),
}


# ---------------------------------------------------------------------------------------
# lvmbench plan
# ---------------------------------------------------------------------------------------
def plan_refuses(content: bytes, tmp_path: Path, capsys) -> str:
    """`lvmbench plan` on a config file holding ``content``: exit 2, one line on stderr, no
    stdout, and nothing written (not even the --skipped file). Returns the line."""
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    before = sorted(tmp_path.rglob("*"))
    code = main(["plan", str(path), "--skipped", str(tmp_path / "skipped.csv")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(tmp_path.rglob("*")) == before
    line = assert_one_clear_line(subprocess.CompletedProcess([], code, out, err), [])
    assert line.startswith("lvmbench plan: error:")
    return line


@pytest.mark.parametrize("name", CORPUS)
def test_plan_refuses(name, tmp_path, capsys):
    line = plan_refuses(CORPUS[name].content(), tmp_path, capsys)
    for word in CORPUS[name].words:
        assert word in line, (word, line)


def test_plan_command_line_refuses_a_non_yaml_file(tmp_path):
    """The installed entry point too (the other cases run in-process)."""
    path = tmp_path / "config.yaml"
    path.write_bytes(CORPUS["not YAML"].content())
    proc = subprocess.run([sys.executable, "-m", "lvmbench", "plan", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert assert_one_clear_line(proc, ["not valid YAML"]).startswith("lvmbench plan: error:")


@pytest.mark.parametrize("args, words", [
    (["{bad"], ["not JSON text"]),
    (["{\"experiments\": []}"], ["experiments"]),
    (["missing.yaml"], ["does not exist"]),
    ([], ["required", "config"]),
], ids=["bad JSON text", "JSON text refused", "a missing file", "no config"])
def test_plan_refuses_bad_arguments(args, words, capsys):
    code = _run(["plan", *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err


def test_plan_refuses_a_directory(tmp_path, capsys):
    assert main(["plan", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_plan_warns_of_K_eval_below_the_training_K(tmp_path, capsys):
    """A value that runs but is probably not meant: one warning line, and the plan."""
    config = exp(K=[2, 20], eval={"K_eval": 10, "k_grid": [1, 10]})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["plan", str(path)]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 2
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "K_eval=10" in warnings[0] and "[20]" in warnings[0], err


def test_yaml_merge_keys_may_override(tmp_path, capsys):
    """Keys merged in with <<: *anchor are overridden on purpose, not repeated by mistake."""
    path = tmp_path / "config.yaml"
    path.write_text("experiments:\n  demo:\n    <<: &axes {datasets: [gmm2d], models: [gmm], objectives: [iwae], "
                    "K: [1], estimators: [score]}\n    K: [2]\n")
    assert main(["plan", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.split() == ["demo/gmm2d/gmm/iwae/K2/score/seed0"]


@pytest.mark.parametrize("given, read", [("false", False), ("FALSE", False), ("True", True), (False, False),
                                         ("auto", "auto")])
def test_a_boolean_key_takes_true_and_false_as_words(given, read):
    """Snakemake's ``--config compile=false`` passes the string 'false': it means False."""
    from lvmbench.grid import plan

    assert plan({**GOOD, "compile": given}).workflow.compile == read


def _run(argv: list[str]) -> int:
    """main's exit code, also where argparse exits (a usage error)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


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
        (work / "config" / "config.yaml").write_bytes(SNAKEMAKE_CASES[name].content())
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
    assert assert_one_clear_line(proc, case.words).startswith("lvmbench config error:")
    assert "rule " not in out  # no job was scheduled
    assert not (work / "results").exists()


@pytest.mark.slow
def test_workflow_refuses_repeated_keys_of_a_configfile(tmp_path):
    """A file given with --configfile is read by Snakemake before the workflow; its repeated
    keys are refused all the same."""
    path = tmp_path / "mine.yaml"
    path.write_bytes(CORPUS["a key twice in a train block"].content())
    proc = subprocess.run(["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path), "-n",
                           "--configfile", str(path), "--replace-workflow-config"], capture_output=True, text=True)
    assert assert_one_clear_line(proc, ["steps", "twice"]).startswith("lvmbench config error:")


# ---------------------------------------------------------------------------------------
# the command line: bad options, bad JSON, bad output paths, against one trained run
# ---------------------------------------------------------------------------------------
RUN_CELL = {"experiment": "c", "dataset": "gaussian_toy", "model": "linear_gaussian", "objective": "iwae", "K": 2,
            "estimator": "reparam", "seed": 0, "dataset_options": {"dim": 3, "n_train": 40, "n_test": 20},
            "train": {"steps": 4, "batch_size": 10, "log_every": 2, "checkpoint_every": 2}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small trained run: a Gaussian encoder, so every measurement takes it."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--quiet", "--cell", json.dumps(RUN_CELL), "--out", str(run), "--device", "cpu"]) == 0
    return run


def _cell(**changes) -> str:
    return json.dumps({**RUN_CELL, **changes})


#: name -> (arguments, with RUN for the trained run and TMP for a fresh directory; words)
CLI_CORPUS: dict[str, tuple[list[str], list[str]]] = {
    # values never silently replaced
    "gradvar --draws 0": (["gradvar", "RUN", "--draws", "0"], ["draws", "0"]),
    "gradvar --draws 1": (["gradvar", "RUN", "--draws", "1"], ["draws", ">= 2"]),
    "gradvar --batch-size 0": (["gradvar", "RUN", "--batch-size", "0"], ["batch_size", "0"]),
    "gradvar --batch-size above the training set": (["gradvar", "RUN", "--batch-size", "41"],
                                                    ["batch_size=41", "40 training points"]),
    "gradvar --estimators typo": (["gradvar", "RUN", "--estimators", "reinforce"], ["reinforce"]),
    "amortize --K 0": (["amortize", "RUN", "--K", "0"], ["K", "0"]),
    "amortize --steps 0": (["amortize", "RUN", "--steps", "0"], ["steps", "0"]),
    "amortize --n-test -1": (["amortize", "RUN", "--n-test", "-1"], ["n_test", "-1"]),
    "amortize --lr nan": (["amortize", "RUN", "--lr", "nan"], ["lr", "finite"]),
    "amortize --K-eval not a multiple of K": (["amortize", "RUN", "--K-eval", "5"], ["K_eval=5", "group size 2"]),
    "evaluate --n-test -1": (["evaluate", "RUN", "--n-test", "-1"], ["n_test", "-1"]),
    "evaluate --n-test above the test set": (["evaluate", "RUN", "--n-test", "21"], ["n_test=21", "20 test points"]),
    "evaluate --K-eval 0": (["evaluate", "RUN", "--K-eval", "0"], ["K_eval", "0"]),
    "evaluate --k-grid not dividing": (["evaluate", "RUN", "--K-eval", "10", "--k-grid", "3"], ["k_grid", "3"]),
    "evaluate --k-grid not integers": (["evaluate", "RUN", "--k-grid", "a,b"], ["--k-grid", "integers"]),
    "evaluate --settings a list": (["evaluate", "RUN", "--settings", "[1]"], ["--settings", "mapping"]),
    "evaluate --settings with a key twice": (["evaluate", "RUN", "--settings", '{"K_eval": 10, "K_eval": 20}'],
                                             ["K_eval", "twice"]),
    "evaluate --settings NaN": (["evaluate", "RUN", "--settings", '{"ordering_threshold": NaN}'],
                                ["ordering_threshold", "finite"]),
    "evaluate --device tpu": (["evaluate", "RUN", "--device", "tpu"], ["--device", "tpu"]),
    "evaluate --out a directory": (["evaluate", "RUN", "--out", "TMP"], ["--out", "directory"]),
    "evaluate --out below a file": (["evaluate", "RUN", "--out", "RUN/cell.json/eval.json"], ["is a file"]),
    "amortize --out a directory": (["amortize", "RUN", "--n-test", "0", "--out", "TMP"], ["--out", "directory"]),
    "amortize --n-test above the test set": (["amortize", "RUN"], ["n_test=100", "20 test points"]),
    "gradvar --out a directory": (["gradvar", "RUN", "--out", "TMP"], ["--out", "directory"]),
    "evaluate a directory that is no run": (["evaluate", "TMP"], ["no cell.json"]),
    # train
    "train --cell {}": (["train", "--cell", "{}", "--out", "TMP/r"], ["missing key"]),
    "train --cell a list": (["train", "--cell", "[1]", "--out", "TMP/r"], ["mapping"]),
    "train --cell not JSON": (["train", "--cell", "{K: 2", "--out", "TMP/r"], ["--cell", "not JSON"]),
    "train --cell with a key twice": (["train", "--cell", '{"K": 2, "K": 3}', "--out", "TMP/r"], ["K", "twice"]),
    "train --cell K a string": (["train", "--cell", _cell(K="2"), "--out", "TMP/r"], ["cell.K", "'2'"]),
    "train --cell seed of 2^63": (["train", "--cell", _cell(seed=2 ** 63), "--out", "TMP/r"], ["cell.seed"]),
    "train --cell experiment ..": (["train", "--cell", _cell(experiment=".."), "--out", "TMP/r"],
                                   ["cell.experiment", "'..'"]),
    "train --cell options a list": (["train", "--cell", _cell(model_options=[1]), "--out", "TMP/r"],
                                    ["model_options", "mapping"]),
    "train --cell dataset option of the wrong type": (
        ["train", "--cell", _cell(dataset_options={"n_train": "x"}), "--out", "TMP/r"], ["n_train", "'x'"]),
    "train --cell NaN option": (["train", "--cell", _cell(model_options={"q_scale": math.nan}), "--out", "TMP/r"],
                                ["q_scale", "finite"]),
    "train --cell batch above the training set": (
        ["train", "--cell", _cell(train={"batch_size": 41}), "--out", "TMP/r"], ["batch_size=41", "40 training"]),
    "train --out a file": (["train", "--cell", _cell(), "--out", "RUN/cell.json"], ["--out", "is a file"]),
    "train --device tpu": (["train", "--cell", _cell(), "--out", "TMP/r", "--device", "tpu"], ["tpu"]),
    "train --data-dir empty": (["train", "--cell", _cell(), "--out", "TMP/r", "--data-dir", ""], ["data directory"]),
    "train without --cell": (["train", "--out", "TMP/r"], ["--cell", "required"]),
    # prepare, aggregate, plot
    "prepare --options a list": (["prepare", "gmm2d", "--options", "[1]"], ["--options", "mapping"]),
    "prepare --options NaN": (["prepare", "gmm2d", "--options", '{"n_train": NaN}'], ["n_train", "finite"]),
    "prepare --out a directory": (["prepare", "gmm2d", "--out", "TMP"], ["--out", "directory"]),
    "aggregate --published not JSON": (["aggregate", "RUN", "--out", "TMP/t", "--published", "[{bad"],
                                       ["--published", "not JSON"]),
    "aggregate --published NaN": (["aggregate", "RUN", "--out", "TMP/t", "--published", json.dumps(
        [published(value=math.nan)])], ["value", "finite"]),
    "aggregate --out a file": (["aggregate", "RUN", "--out", "RUN/cell.json"], ["--out", "is a file"]),
    "aggregate --out a directory of other files": (["aggregate", "RUN", "--out", "RUN"],
                                                   ["which aggregate does not write", "of its own"]),
    "plot --out a file": (["plot", "TMP", "--runs", "RUN", "--out", "RUN/cell.json"], ["--out", "is a file"]),
}


@pytest.mark.parametrize("name", CLI_CORPUS)
def test_command_line_refuses(name, trained, tmp_path, capsys, monkeypatch):
    """Refused with one line before any work starts: nothing is written anywhere."""
    args, words = CLI_CORPUS[name]
    monkeypatch.setenv("LVMBENCH_OFFLINE", "1")
    argv = [a.replace("RUN", str(trained)).replace("TMP", str(tmp_path)) for a in args]
    before = {p: p.stat().st_mtime_ns for p in [*trained.rglob("*"), *tmp_path.rglob("*")]}
    code = _run(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"lvmbench {argv[0]}: error:"), err
    for word in words:
        assert word in err, (word, err)
    assert {p: p.stat().st_mtime_ns for p in [*trained.rglob("*"), *tmp_path.rglob("*")]} == before


@pytest.mark.parametrize("damage, words", [
    ("truncated cell.json", ["cell.json", "not a readable training spec"]),
    ("truncated train.json", ["train.json", "not readable JSON"]),
    ("no train.json", ["training has not finished"]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_measuring_a_damaged_or_unfinished_run_is_one_line(damage, words, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    name = damage.split()[-1]
    if damage.startswith("truncated"):
        (run / name).write_text((run / name).read_text()[:15])
    else:
        (run / name).unlink()
    for command in ("evaluate", "gradvar", "amortize"):
        assert main([command, str(run), "--quiet", *(["--n-test", "0"] if command == "amortize" else [])]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    assert not (run / "eval.json").exists() and not (run / "gradvar.csv").exists()


def test_an_internal_error_is_one_line_naming_its_log(monkeypatch, tmp_path, capsys):
    """A bug (here: an injected ZeroDivisionError) prints one line naming the log, whose
    file holds the traceback; the exit status is 1, a user error's 2."""
    import lvmbench.cli as cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "cmd_list", lambda args: 1 / 0)  # parser() binds the command when main calls it
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "internal error (ZeroDivisionError" in err
    log = next((tmp_path / "lvmbench" / "errors").glob("*-list-*.log"))
    assert str(log) in err and "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    import lvmbench.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_list", interrupted)
    assert main(["list"]) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err


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
    "binarized mnist not gzip": DataCase(["binarized_mnist"], ["corrupt", "binarized_mnist_train.amat.gz",
                                                               "delete it"],
                                         {"../binarized_mnist/binarized_mnist_train.amat.gz": b"not gzip"}),
    "a directory where the mnist file belongs": DataCase(["mnist"], ["not found"], {f"{MNIST}/x": b""}),
    "unknown dataset": DataCase(["mnist6k"], ["mnist6k"]),
    "unknown dataset option": DataCase(["gmm2d", "--options", '{"n_points": 3}'], ["n_points"]),
    "zero training points": DataCase(["gmm2d", "--options", '{"n_train": 0}'], ["n_train", "0"]),
    "a flag that is not a flag": DataCase(["mnist", "--options", '{"download": "no"}'], ["download", "true or false"]),
    "options not JSON": DataCase(["gmm2d", "--options", "{n_train: 3"], ["--options"]),
    "an empty data directory": DataCase(["mnist", "--data-dir", ""], ["data directory", "empty"]),
}


def _prepare_refuses(args: list[str], data_dir: Path, capsys) -> str:
    argv = ["prepare", *args] + ([] if "--data-dir" in args else ["--data-dir", str(data_dir)])
    code = _run(argv)
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    line = assert_one_clear_line(subprocess.CompletedProcess([], code, out, err), [])
    assert line.startswith("lvmbench prepare: error:")
    return line


@pytest.mark.parametrize("name", DATA_CORPUS)
def test_prepare_refuses(name, tmp_path, monkeypatch, capsys):
    case = DATA_CORPUS[name]
    monkeypatch.setenv("LVMBENCH_OFFLINE", "1")
    for rel, content in case.files.items():
        path = (tmp_path / "mnist" / rel).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    line = _prepare_refuses(case.args, tmp_path, capsys)
    for word in case.words:
        assert word in line, (word, line)


def _forge_verified(path: Path, content: bytes) -> None:
    """``path`` holding ``content``, with a sidecar claiming it was verified (as if it had
    been corrupted in place after verification, its size and mtime kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    st = path.stat()
    path.with_name(path.name + ".verified").write_text(json.dumps(
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "algorithm": "sha256", "digest": CHECKSUMS[path.name]}))


def test_prepare_verifies_the_content_not_the_sidecar(tmp_path, monkeypatch, capsys):
    """A verified file corrupted in place keeps its size and mtime, so the sidecar still
    matches: prepare hashes the content again and refuses it; the jobs after it, which
    trust the sidecar, then meet a corrupt gzip as one line too (never BadGzipFile)."""
    from lvmbench.data import DatasetError, load_dataset

    monkeypatch.setenv("LVMBENCH_OFFLINE", "1")
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        _forge_verified(tmp_path / "mnist" / name, b"\x00" * 4096)
    line = _prepare_refuses(["mnist"], tmp_path, capsys)
    assert "checksum mismatch" in line and MNIST in line
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):  # prepare recorded the true digest
        _forge_verified(tmp_path / "mnist" / name, b"\x00" * 4096)
    with pytest.raises(DatasetError, match="corrupt or truncated .*BadGzipFile.*delete it"):
        load_dataset("mnist", tmp_path)


def test_an_unreadable_file_gets_advice_that_fits(tmp_path, monkeypatch, capsys):
    """Permission denied is fixed by permissions, not by downloading again (injected: the
    tests may run as root, whom chmod does not stop)."""
    import lvmbench.data.remote as remote

    monkeypatch.setenv("LVMBENCH_OFFLINE", "1")
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / MNIST).write_bytes(b"x")

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(remote, "_digest", denied)
    line = _prepare_refuses(["mnist"], tmp_path, capsys)
    assert "permission denied" in line and "chmod" in line and "download" not in line, line
