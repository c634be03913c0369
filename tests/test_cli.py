"""The command line and the workflow refuse bad input with one clear line, before any
job starts and without a traceback: through `lvmbench plan` and through `snakemake -n`."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lvmbench.cli import main, parser, plain

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"

GOOD = {
    "experiments": {
        "demo": {
            "datasets": ["gmm2d"],
            "models": ["gmm"],
            "objectives": ["iwae"],
            "K": [2],
            "estimators": ["score"],
        }
    }
}


def edited(edit) -> dict:
    config = copy.deepcopy(GOOD)
    edit(config, config["experiments"]["demo"])
    return config


# name -> (config, words the message must contain)
BAD = {
    "unknown dataset": (edited(lambda c, e: e.update(datasets=["mnist6k"])), ["mnist6k"]),
    "unknown model": (edited(lambda c, e: e.update(models={"big": {"model": "transformer"}})), ["transformer"]),
    "unknown estimator": (edited(lambda c, e: e.update(estimators=["reinforce"])), ["reinforce"]),
    "invalid combination": (edited(lambda c, e: e.update(estimators=["reparam"])), ["reparam", "reparameterizable"]),
    "K below 1": (edited(lambda c, e: e.update(K=[2, 0])), ["K", "0"]),
    "wrong type": (edited(lambda c, e: c.update(train={"steps": "many"})), ["steps", "many"]),
    "unknown key": (edited(lambda c, e: c.update(train={"stepz": 10})), ["stepz"]),
    "missing key": (edited(lambda c, e: e.pop("estimators")), ["estimators"]),
}


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)


def assert_one_clear_line(proc: subprocess.CompletedProcess, words: list[str]) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out and 'File "' not in out, out
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, out
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


# ---------------------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------------------
def subcommands() -> list[str]:
    sub = next(a for a in parser()._actions if a.dest == "command")
    return list(sub.choices)


def test_help_documents_every_subcommand():
    proc = run(sys.executable, "-m", "lvmbench", "--help")
    assert proc.returncode == 0
    names = subcommands()
    assert {"list", "prepare", "plan", "train", "evaluate", "gradvar", "aggregate", "plot"} <= set(names)
    for name in names:
        assert f"\n    {name}" in proc.stdout, f"lvmbench --help does not list {name}"


@pytest.mark.parametrize("command", subcommands())
def test_subcommand_help(command):
    proc = run(sys.executable, "-m", "lvmbench", command, "--help")
    assert proc.returncode == 0 and "usage: lvmbench " + command in proc.stdout


# ---------------------------------------------------------------------------------------
# bad configs
# ---------------------------------------------------------------------------------------
def test_good_config_plans(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    proc = run(sys.executable, "-m", "lvmbench", "plan", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["demo/gmm2d/gmm/iwae/K2/score/seed0"]


@pytest.mark.parametrize("case", BAD)
def test_plan_refuses_bad_config(case, tmp_path, capsys):
    """In-process (an uncaught exception would fail the test with its traceback)."""
    config, words = BAD[case]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["plan", str(path)])
    out, err = capsys.readouterr()
    line = assert_one_clear_line(subprocess.CompletedProcess([], code, out, err), words)
    assert line.startswith("lvmbench plan: error:")


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
@pytest.mark.parametrize("case", BAD)
def test_workflow_refuses_bad_config(case, tmp_path):
    config, words = BAD[case]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run("snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path), "-n")
    line = assert_one_clear_line(proc, words)
    assert line.startswith("lvmbench config error:")
    assert "rule " not in proc.stdout + proc.stderr  # no job was scheduled
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------
# the command line as a reader meets it
# ---------------------------------------------------------------------------------------
def test_output_into_head_ends_quietly():
    """A reader that stops early (| head) ends lvmbench with the shell's SIGPIPE status and
    no traceback: here the reader is gone before lvmbench writes its first line."""
    proc = subprocess.Popen([sys.executable, "-m", "lvmbench", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and err == "", err


@pytest.mark.parametrize("argv, words", [
    (["trian"], ["invalid choice: 'trian' (did you mean 'train'?)"]),
    (["amortize", "run", "--objective", "iwea"], ["invalid choice: 'iwea' (did you mean 'iwae'?)"]),
])
def test_mistyped_choice_gets_a_suggestion(argv, words, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("edit, words", [
    (lambda c, e: e.update(estimators=["scoer"]), ["unknown estimator 'scoer' (did you mean 'score'?)"]),
    (lambda c, e: e.update(datasets=["gmm2"]), ["unknown dataset 'gmm2' (did you mean 'gmm2d'?)"]),
    (lambda c, e: c.update(train={"stepz": 10}), ["unknown key(s) ['stepz'] (did you mean 'steps'?)"]),
    (lambda c, e: e.update(estimator=["score"]), ["unknown key(s) ['estimator'] (did you mean 'estimators'?)"]),
])
def test_mistyped_name_gets_a_suggestion(edit, words, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(edited(edit)))
    assert main(["plan", str(path)]) == 2
    line = capsys.readouterr().err
    for word in words:
        assert word in line, line


def test_plan_counts_per_experiment_and_one_cells_spec(tmp_path, capsys):
    config = copy.deepcopy(GOOD)
    config["experiments"]["demo"].update(K=[1, 2], estimators=["score", "reparam"])
    config["experiments"]["more"] = {**GOOD["experiments"]["demo"], "objectives": ["iwae", "elbo"]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["plan", str(path)]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 4
    assert [line.split() for line in err.splitlines()] == [["experiment", "cells", "skipped"], ["demo", "2", "2"],
                                                           ["more", "2", "0"], ["total", "4", "2"]]
    assert main(["plan", str(path), "--cell", "more/gmm2d/gmm/elbo/K2/score/seed0"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["cell"]["objective"] == "elbo" and spec["eval"]["K_eval"] == 5000 and spec["amortization"] is None
    assert main(["plan", str(path), "--cell", "more/gmm2d/gmm/elbo/K2/scor/seed0"]) == 2
    assert "did you mean 'more/gmm2d/gmm/elbo/K2/score/seed0'?" in capsys.readouterr().err


def test_help_and_list_read_without_rest_markup(capsys):
    assert plain("The ``lvmbench`` CLI; see :class:`~lvmbench.settings.Cell` and :func:`plan`.") == \
        "The lvmbench CLI; see Cell and plan."
    proc = run(sys.executable, "-m", "lvmbench", "--help")
    assert "``" not in proc.stdout and ":mod:" not in proc.stdout
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out
    assert "options: components=3, learn_prior=False, hidden=(64,)" in out  # every option with its default
    assert "declares: requires_rsample: True; needs_model: none; objectives: elbo, iwae" in out
