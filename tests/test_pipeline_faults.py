"""Faults at the level of the workflow: a run that diverges to NaN mid-training.

tests/test_faults.py covers the runner (lvmbench train) alone: SIGKILL and resume,
damaged checkpoints, an injected NaN, out-of-memory retries; tests/test_bundles.py a member
of a bundle that diverges. Here the NaN comes through the real path, a learning rate of
1e30 (linear_gaussian with reparameterized gradients overflows at step 2,
deterministically), inside a Snakemake run of two experiments: the diverged cell is
recorded as such, every other job finishes, and the tables say so without a NaN.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from test_pipeline import snakemake, workdir_with

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
        assert table.select_dtypes("number").notna().all().all(), name
