"""Faults at the level of the workflow: a run that diverges to NaN mid-training, and a
trainer whose Snakemake is killed.

tests/test_faults.py covers the runner (lvmbench train) alone: SIGKILL and resume,
damaged checkpoints, an injected NaN, out-of-memory retries. Here the NaN comes through
the real path, a learning rate of 1e30 (linear_gaussian with reparameterized gradients
overflows at step 2, deterministically), inside a Snakemake run of two experiments.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

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
        "diverge": {**AXES, "train": {"lr": 1.0e30}},
    },
}
GOOD = "fine/gaussian_toy/linear_gaussian/iwae/K2/reparam/seed0"
BAD = "diverge/gaussian_toy/linear_gaussian/iwae/K2/reparam/seed0"
MESSAGE = f"cell {BAD}: non-finite loss at step 2"


@pytest.fixture(scope="module")
def diverged(tmp_path_factory) -> tuple[Path, str]:
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    work = workdir_with(tmp_path_factory.mktemp("nan"), CONFIG)
    proc = snakemake(work, "--cores", "2", "--keep-going", check=False)
    assert proc.returncode != 0, "a diverging cell must fail the workflow"
    return work, proc.stdout + proc.stderr


def test_nan_stops_its_run_with_a_line_naming_the_cell(diverged):
    work, out = diverged
    log = work / "results" / "runs" / BAD / "logs" / "train.log"
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines == [f"lvmbench train: error: {MESSAGE}; nothing was written for this step "
                     "(the last checkpoint stays valid)"], lines
    assert "Traceback" not in log.read_text()
    assert re.search(r"Error in rule train:", out) and BAD in out  # Snakemake names the job
    assert MESSAGE in out  # and shows its log (show-failed-logs in profiles/default)
    assert not (work / "results" / "runs" / BAD / "train.json").exists()


def test_keep_going_finishes_the_independent_jobs(diverged):
    """The other experiment's train, evaluate and gradvar all complete, with finite numbers."""
    work, _ = diverged
    run = work / "results" / "runs" / GOOD
    ev = json.loads((run / "eval.json").read_text())
    assert math.isfinite(ev["log_px"]) and math.isfinite(ev["log_px_se"])
    assert math.isfinite(json.loads((run / "train.json").read_text())["final_bound"])
    gradvar = pd.read_csv(run / "gradvar.csv")
    assert len(gradvar) and gradvar[["snr_mean", "var_mean"]].map(math.isfinite).all().all()
    assert set((work / "results" / "plan" / "cells.txt").read_text().split()) == {GOOD, BAD}


def test_no_nan_reaches_a_table(diverged):
    """aggregate needs every cell's train.json, so it does not run: no table is written, so
    none can hold the diverged cell's NaN; the run reports the incomplete jobs instead."""
    work, out = diverged
    assert not (work / "results" / "tables").exists()
    assert "Exiting because a job execution failed" in out


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
        run / "logs" / "train.log").read_text()
    with open(run / ".lock") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
