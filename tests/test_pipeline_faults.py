"""Faults at the level of the workflow: a run that diverges to NaN mid-training, and a
trainer whose Snakemake is killed.

tests/test_faults.py covers the runner (lvmbench train) alone: SIGKILL and resume,
damaged checkpoints, an injected NaN, out-of-memory retries; tests/test_bundles.py a member
of a bundle that diverges. Here the NaN comes through the real path, a learning rate of
1e30 (linear_gaussian with reparameterized gradients overflows at step 2,
deterministically), inside a Snakemake run of two experiments: the diverged cell is
recorded as such, every other job finishes, and the tables say so without a NaN.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
from test_pipeline import SNAKEFILE, snakemake, workdir_with

from lvmbench.runs import _start_time

pytestmark = pytest.mark.slow

AXES = {"datasets": ["gaussian_toy"], "models": ["linear_gaussian"], "objectives": ["iwae"], "K": [2],
        "estimators": ["reparam"], "dataset_options": {"gaussian_toy": {"n_train": 32, "n_test": 16}}}
CONFIG = {
    "results": "results", "device": "cpu", "threads": 1, "gpu": 0,
    "train": {"steps": 10, "batch_size": 16, "log_every": 5, "checkpoint_every": 5, "snapshots": 2},
    "eval": {"K_eval": 10, "k_grid": [1, 10], "n_test": 16, "batch_size": 16, "active_units_n": 16},
    "gradvar": {"draws": 3, "batch_size": 4},
    "experiments": {
        "fine": AXES,
        "diverge": {**AXES, "train": {"lr": 1.0e30}, "seeds": [0, 1]},
    },
}
GOOD = "fine/gaussian_toy/linear_gaussian/iwae/K2/reparam/seed0"
BAD = "diverge/gaussian_toy/linear_gaussian/iwae/K2/reparam/seed0"


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    work = workdir_with(tmp_path_factory.mktemp("nan"), CONFIG)
    proc = snakemake(work, "--cores", "2")
    return work, proc.stdout + proc.stderr


def test_divergence_is_recorded_with_one_line_naming_the_cell(diverged):
    work, _ = diverged
    log = work / "results" / "logs" / "train" / "diverge/gaussian_toy/linear_gaussian/iwae/K2/reparam/seed0+1.log"
    text = log.read_text()
    assert f"cell {BAD}: diverged at step 2" in text and "Traceback" not in text
    summary = json.loads((work / "results" / "runs" / BAD / "train.json").read_text())
    assert (summary["status"], summary["diverged_at"]) == ("diverged", 2)
    evaluation = json.loads((work / "results" / "runs" / BAD / "eval.json").read_text())
    assert evaluation["status"] == "diverged at step 2" and "log_px" not in evaluation


def test_the_other_jobs_finish_with_finite_numbers(diverged):
    work, _ = diverged
    run = work / "results" / "runs" / GOOD
    ev = json.loads((run / "eval.json").read_text())
    assert math.isfinite(ev["log_px"]) and math.isfinite(ev["log_px_se"])
    assert math.isfinite(json.loads((run / "train.json").read_text())["final_bound"])
    gradvar = pd.read_csv(run / "gradvar.csv")
    assert len(gradvar) and gradvar[["snr_mean", "var_mean"]].map(math.isfinite).all().all()


def test_no_nan_reaches_a_table_and_the_row_says_diverged(diverged):
    """The tables are written; the diverged cells' rows say "diverged at step 2", they stay out
    of the means, and no table holds a NaN where a number was computed."""
    work, _ = diverged
    tables = work / "results" / "tables"
    summary = pd.read_csv(tables / "summary.csv").set_index("cell")
    assert summary.loc[BAD, "status"] == "diverged at step 2"
    assert summary.loc[GOOD, "status"] == "ok"
    grouped = pd.read_csv(tables / "summary_grouped.csv")
    assert set(grouped.experiment) == {"fine"}  # the sd of one seed is undefined, so only the means are checked
    assert grouped[["n_seeds", "log_px_mean", "nll_mean", "exact_log_px_mean"]].notna().all().all()
    assert "diverged at step 2" in (tables / "summary.md").read_text()
    ok = summary[summary.status == "ok"]
    assert ok[["test_log_px", "test_log_px_se", "final_train_bound"]].map(math.isfinite).all().all()
    for name in ("bound_curve", "ordering", "ordering_checks"):
        table = pd.read_csv(tables / f"{name}.csv")
        assert not table.cell.str.startswith("diverge/").any(), name
        computed = table.drop(columns=["simulated_reference"], errors="ignore")  # empty where no BDMC ran
        assert computed.select_dtypes("number").notna().all().all(), name


def test_a_trainer_whose_snakemake_died_stops(tmp_path):
    """SIGKILL of Snakemake leaves its job's shell and trainer behind; the trainer watches the
    Snakemake process that started it (lvmbench.runs.watch_parent) and stops within seconds,
    saying why in its log, so no orphan keeps writing the run directory and its lock is free."""
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    config = {**CONFIG, "train": {**CONFIG["train"], "steps": 10 ** 8, "checkpoint_every": 10 ** 7},
              "experiments": {"fine": AXES}}
    work = workdir_with(tmp_path, config)
    run = work / "results" / "runs" / GOOD
    snake = subprocess.Popen(["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(work), "--cores", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trainer = None
    try:
        deadline = time.time() + 180
        while trainer is None:
            text = (run / ".lock").read_text() if (run / ".lock").exists() else ""
            if text.startswith("pid "):
                trainer = int(text.split()[1])
            assert snake.poll() is None and time.time() < deadline, "the trainer did not start"
            time.sleep(0.1)
        snake.kill()
        snake.wait()
        deadline = time.time() + 30
        while _start_time(trainer) is not None:
            assert time.time() < deadline, "the orphaned trainer is still running"
            time.sleep(0.2)
        trainer = None
    finally:
        if snake.poll() is None:
            snake.kill()
        if trainer is not None and _start_time(trainer) is not None:
            os.kill(trainer, signal.SIGKILL)
    assert f"the Snakemake process {snake.pid} that started this job is gone; stopping" in (
        work / "results" / "logs" / "train" / f"{GOOD}.log").read_text()
    with open(run / ".lock") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
