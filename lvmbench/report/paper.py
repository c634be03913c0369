"""Published-vs-reproduced tables: each reproduced number beside the paper's.

An experiment config (config/experiments/*.yaml) lists the paper's numbers under
``published``, one mapping per number::

    - {experiment: mnist, dataset: mnist, model: vae1, objective: iwae, K: 50,
       metric: nll, value: 84.78, tolerance: 0.5, source: "Burda et al. 2016, Table 1"}

Metrics: ``nll`` (test -log p(x) by L_K_eval, nats), ``log_px`` (test log p(x)),
``snr_slope`` (log-log slope of gradient SNR, the mean over the group's components,
against K at the final snapshot or the optimum, fitted over the K whose SNR is at least 3x
its Monte Carlo floor; needs ``group``: decoder or encoder, and ``estimator``: the
measured estimator). ``estimator``
may be left out for nll/log_px when one estimator matches. The table gives the
reproduced mean and standard deviation over seeds, the difference, and whether it lies
within the stated tolerance.
"""

from __future__ import annotations

import math

import pandas as pd

from lvmbench.errors import LvmbenchError
from lvmbench.report.claims import select
from lvmbench.stats import snr_floor, snr_slope

METRICS = ("nll", "log_px", "snr_slope")
#: the SNR summary the slopes are fitted to: the mean over a group's parameter components
SNR_COLUMN = "snr_mean"
REQUIRED = ("experiment", "dataset", "model", "objective", "metric", "value", "tolerance", "source")
OPTIONAL = ("K", "estimator", "group", "note")
COLUMNS = ["experiment", "dataset", "model", "objective", "K", "estimator", "metric", "group", "published",
           "reproduced_mean", "reproduced_sd", "n_seeds", "difference", "tolerance", "within_tolerance",
           "schedule", "source"]


def check_published(published: list[dict]) -> None:
    """One clear message for the first malformed entry."""
    if not isinstance(published, list):
        raise LvmbenchError("published: expected a list of mappings")
    for i, row in enumerate(published):
        where = f"published[{i}]"
        if not isinstance(row, dict):
            raise LvmbenchError(f"{where}: expected a mapping")
        missing = [k for k in REQUIRED if k not in row]
        unknown = set(row) - set(REQUIRED) - set(OPTIONAL)
        if missing or unknown:
            raise LvmbenchError(f"{where}: " + (f"missing {missing}" if missing else f"unknown keys {sorted(unknown)}"))
        if row["metric"] not in METRICS:
            raise LvmbenchError(f"{where}.metric must be one of {', '.join(METRICS)}, got {row['metric']!r}")
        if row["metric"] == "snr_slope" and (row.get("group") not in ("decoder", "encoder") or "estimator" not in row):
            raise LvmbenchError(f"{where}: snr_slope needs group (decoder or encoder) and estimator")
        if row["metric"] != "snr_slope" and "K" not in row:
            raise LvmbenchError(f"{where}: {row['metric']} needs K")
        for key in ("value", "tolerance"):
            if isinstance(row[key], bool) or not isinstance(row[key], (int, float)):
                raise LvmbenchError(f"{where}.{key} must be a number, got {row[key]!r}")
        if row["tolerance"] < 0:
            raise LvmbenchError(f"{where}.tolerance must be >= 0")


def describe_schedule(train: dict) -> str:
    """How a run was trained, for the table: e.g. 'burda, 8 stages (3280 epochs)'."""
    if train.get("schedule") == "burda":
        stages = train.get("burda_stages", 8)
        return f"burda, {stages} stages ({sum(3 ** i for i in range(stages))} epochs)"
    return f"{train.get('schedule', 'constant')}, {train.get('steps')} steps"


def _select(df: pd.DataFrame, row: dict, keys: tuple[str, ...]) -> pd.DataFrame:
    """The rows of ``df`` whose ``keys`` equal the published row's (those it names)."""
    return select(df, {k: row[k] for k in keys if k in row})


def _per_seed(row: dict, summary: pd.DataFrame, gradvar: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """The reproduced metric per seed, and the schedules of the runs used."""
    if row["metric"] in ("nll", "log_px"):
        runs = _select(summary[summary.status == "ok"], row,
                       ("experiment", "dataset", "model", "objective", "K", "estimator"))
        if runs.estimator.nunique() > 1:
            raise LvmbenchError(f"published row {row['experiment']}/{row['model']}/{row['objective']}/K{row['K']} "
                                f"matches estimators {sorted(runs.estimator.unique())}: name one")
        values = runs.set_index("seed")["test_nll" if row["metric"] == "nll" else "test_log_px"]
        return values, sorted(runs.schedule.unique()) if "schedule" in runs else []
    gv = gradvar[gradvar.final_step.astype(bool) & gradvar.skipped.isna()] if len(gradvar) else gradvar
    gv = _select(gv.rename(columns={"objective": "measured_objective"}).rename(
        columns={"trained_objective": "objective"}), row, ("experiment", "dataset", "model", "objective",
                                                            "estimator", "group"))
    slopes = {}
    for seed, df in gv.groupby("seed"):
        by_k = df.assign(floor=snr_floor(df.draws.to_numpy())).groupby("K")[[SNR_COLUMN, "floor"]].mean()
        slope, _ = snr_slope(by_k.index.to_numpy(), by_k[SNR_COLUMN].to_numpy(), by_k.floor.to_numpy())
        if math.isfinite(slope):
            slopes[seed] = slope
    sched = _select(summary, row, ("experiment", "dataset", "model", "objective"))
    return pd.Series(slopes, dtype=float), sorted(sched.schedule.unique()) if "schedule" in sched else []


def published_table(published: list[dict], summary: pd.DataFrame, gradvar: pd.DataFrame) -> pd.DataFrame:
    """One row per published number: reproduced mean +- sd over seeds, difference, tolerance."""
    check_published(published)
    rows = []
    for row in published:
        values, schedules = _per_seed(row, summary, gradvar)
        mean = float(values.mean()) if len(values) else math.nan
        diff = mean - row["value"]
        rows.append({**{k: row.get(k) for k in ("experiment", "dataset", "model", "objective", "K", "estimator",
                                                "metric", "group")},
                     "published": row["value"], "reproduced_mean": mean,
                     "reproduced_sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                     "n_seeds": int(len(values)), "difference": diff, "tolerance": row["tolerance"],
                     "within_tolerance": bool(abs(diff) <= row["tolerance"]) if len(values) else None,
                     "schedule": "; ".join(schedules) if len(values) else "not run",
                     "source": row["source"]})
    return pd.DataFrame(rows, columns=COLUMNS)
