"""Paper claims as checks: orderings, rates and signs that hold at any schedule.

A published number is comparable only under the paper's full protocol, but a paper's
claims (IWAE's NLL is below the VAE's at equal K; the decoder's gradient SNR grows as
sqrt(K)) can be checked at any schedule. An experiment config lists them under
``claims``, one mapping each::

    - name: iwae_below_vae
      claim: "at equal K > 1, IWAE's test NLL is below the VAE's"
      source: "Burda et al. 2016, Table 1"
      check: less            # less | greater | decreasing | increasing | slope | order | at_most
      metric: nll            # see METRICS
      where: {experiment: mnist}
      a: {objective: iwae}   # the cells on the left of the comparison
      b: {objective: vae}    # ... and on the right
      pair: [model, K]       # a and b are compared within equal values of these fields
      filter: {K: {min: 2}}  # numeric bounds on fields
      tolerance: 0.0

Statistics (``value`` with its ``uncertainty``, one standard error):

* ``less`` / ``greater``: the mean over seeds of metric(a) - metric(b) within each pair
  group; the claim holds when every group's difference is below ``tolerance`` (above
  ``-tolerance`` for ``greater``). The value reported is the worst group's. The
  uncertainty is the SE of the difference over seeds, or, with one seed, from the
  measurements' own SEs (test log p(x) over test points).
* ``decreasing`` / ``increasing``: ``less`` / ``greater`` between consecutive values of
  ``along`` (e.g. K) among the ``a`` cells, within each ``pair`` group.
* ``slope``: the least-squares slope of log metric against log ``along`` over the ``a``
  cells (means over seeds); it holds when |slope - target| <= tolerance. Its uncertainty is
  the regression's SE. For SNR (the mean over the group's components, as in
  :mod:`lvmbench.report.paper`) only the values of ``along`` whose SNR is at least
  ``FLOOR_MULTIPLE`` times its Monte Carlo floor sqrt(2 / (pi draws)) enter the fit: below
  it the estimate measures the noise of the estimate, not the gradient.
* ``order``: ``cells`` is a list of selectors from best to worst; ``less`` (for metrics where
  lower is better) between each consecutive pair, each within ``tolerance``.
* ``at_most``: the largest mean metric over the ``a`` cells is at most ``tolerance``
  (e.g. an encoder gradient variance of zero at the exact posterior).

A claim whose cells did not all run, or whose runs are not ``ok``, is ``not run``: never
passed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from lvmbench.errors import LvmbenchError
from lvmbench.registry import did_you_mean
from lvmbench.stats import FLOOR_MULTIPLE, snr_floor

CHECKS = ("less", "greater", "decreasing", "increasing", "slope", "order", "at_most")
#: metric -> (table, value column, SE column or None); gradient metrics are read at each
#: run's final snapshot, for the parameter group after the colon
METRICS = {
    "nll": ("summary", "test_nll", "test_log_px_se"),
    "log_px": ("summary", "test_log_px", "test_log_px_se"),
    "ess": ("summary", "ess_mean", None),
    "active_units": ("summary", "active_units", None),
    "train_bound": ("summary", "final_train_bound", None),
    "snr:decoder": ("gradvar", "snr_mean", None), "snr:encoder": ("gradvar", "snr_mean", None),
    "variance:decoder": ("gradvar", "var_mean", None), "variance:encoder": ("gradvar", "var_mean", None),
}
#: the fields a claim selects, pairs and orders cells by
FIELDS = ("experiment", "dataset", "model", "objective", "K", "estimator", "seed", "model_name", "objective_name")
KEYS = ("name", "claim", "source", "check", "metric", "where", "a", "b", "cells", "pair", "along", "filter",
        "target", "tolerance", "note")
REQUIRED = ("name", "claim", "source", "check", "metric", "tolerance")
COLUMNS = ["name", "claim", "source", "check", "metric", "statistic", "value", "uncertainty", "tolerance", "result",
           "n_cells", "schedule", "detail"]


def check_claims(claims: Any) -> None:
    """One clear line for the first malformed claim."""
    if not isinstance(claims, list):
        raise LvmbenchError("claims: expected a list of mappings")
    names = set()
    for i, claim in enumerate(claims):
        where = f"claims[{i}]"
        if not isinstance(claim, dict):
            raise LvmbenchError(f"{where}: expected a mapping")
        missing = [k for k in REQUIRED if k not in claim]
        unknown = sorted(set(claim) - set(KEYS))
        if missing or unknown:
            raise LvmbenchError(f"{where}: " + (f"missing {missing}" if missing else f"unknown keys {unknown}"))
        if claim["name"] in names:
            raise LvmbenchError(f"{where}: a second claim named {claim['name']!r}")
        names.add(claim["name"])
        if claim["check"] not in CHECKS:
            raise LvmbenchError(f"{where}.check must be one of {', '.join(CHECKS)}, got {claim['check']!r}")
        if claim["metric"] not in METRICS:
            raise LvmbenchError(f"{where}.metric must be one of {', '.join(METRICS)}, got {claim['metric']!r}")
        needs = {"less": ("a", "b"), "greater": ("a", "b"), "decreasing": ("a", "along"), "increasing": ("a", "along"),
                 "slope": ("a", "along", "target"), "order": ("cells",), "at_most": ("a",)}[claim["check"]]
        lacking = [k for k in needs if k not in claim]
        if lacking:
            raise LvmbenchError(f"{where}: check {claim['check']} needs {', '.join(lacking)}")
        for key in ("tolerance", *(("target",) if "target" in claim else ())):
            v = claim[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise LvmbenchError(f"{where}.{key} must be a finite number, got {v!r}")
        if claim["tolerance"] < 0:
            raise LvmbenchError(f"{where}.tolerance must be >= 0")
        for key in ("where", "a", "b", "filter"):
            if key in claim and not isinstance(claim[key], dict):
                raise LvmbenchError(f"{where}.{key}: expected a mapping of fields")
        if "cells" in claim and (not isinstance(claim["cells"], list) or len(claim["cells"]) < 2
                                 or not all(isinstance(c, dict) for c in claim["cells"])):
            raise LvmbenchError(f"{where}.cells: expected a list of at least two mappings of fields")
        if not isinstance(claim.get("pair", []), list):
            raise LvmbenchError(f"{where}.pair: expected a list of field names")
        named = [(f"{where}.{key}", k) for key in ("where", "a", "b", "filter") for k in claim.get(key) or {}]
        named += [(f"{where}.cells[{j}]", k) for j, c in enumerate(claim.get("cells") or []) for k in c]
        named += [(f"{where}.pair", k) for k in claim.get("pair", [])]
        named += [(f"{where}.along", claim["along"])] if "along" in claim else []
        for at, name in named:
            if name not in FIELDS:
                raise LvmbenchError(f"{at}: unknown field {name!r}{did_you_mean(str(name), FIELDS)}; fields: "
                                    f"{', '.join(FIELDS)}")
        for key, bounds in (claim.get("filter") or {}).items():
            if not isinstance(bounds, dict) or not bounds or set(bounds) - {"min", "max"}:
                raise LvmbenchError(f"{where}.filter.{key}: expected a mapping with min and/or max")


def _units(text: Any) -> float:
    """Active units written as '19' or '16+5' -> their sum."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    return float(sum(int(p) for p in str(text).split("+") if p.strip())) if str(text) not in ("", "nan") else math.nan


def metric_table(metric: str, summary: pd.DataFrame, gradvar: pd.DataFrame) -> pd.DataFrame:
    """One row per run (and measured estimator, for gradient metrics, at the run's final
    snapshot: ``final_step`` of :func:`lvmbench.report.aggregate.collect`) with the
    selectable fields, ``value`` and ``se``; only runs whose status is ok."""
    table, column, se = METRICS[metric]
    if table == "summary":
        df = summary[summary.status == "ok"].copy()
        df["value"] = df[column].map(_units) if metric == "active_units" else df[column].astype(float)
        df["se"] = df[se].astype(float) if se else 0.0
        return df
    if gradvar.empty or "skipped" not in gradvar:
        return pd.DataFrame(columns=["value", "se"])
    group = metric.split(":")[1]
    ok = set(summary.cell[summary.status == "ok"])
    df = gradvar[gradvar.final_step.astype(bool) & gradvar.skipped.isna() & (gradvar.group == group)
                 & gradvar.cell.isin(ok)].copy()
    df = df.drop(columns=["objective"]).rename(columns={"trained_objective": "objective"})
    df["value"], df["se"] = df[column].astype(float), 0.0
    df["floor"] = snr_floor(df.draws.to_numpy(float)) if metric.startswith("snr:") else 0.0
    return df


def select(df: pd.DataFrame, *selectors: dict, filters: dict | None = None) -> pd.DataFrame:
    """The rows whose fields equal every selector's values (compared as text, so K: 5 and
    K: "5" agree) and lie within ``filters``' numeric bounds; none when a field is missing."""
    mask = np.ones(len(df), dtype=bool)
    for selector in selectors:
        for key, value in (selector or {}).items():
            if key not in df:
                return df.iloc[0:0]
            mask &= (df[key].astype(str) == str(value)).to_numpy()
    for key, bounds in (filters or {}).items():
        if key not in df:
            return df.iloc[0:0]
        values = pd.to_numeric(df[key], errors="coerce")
        if "min" in bounds:
            mask &= (values >= bounds["min"]).to_numpy()
        if "max" in bounds:
            mask &= (values <= bounds["max"]).to_numpy()
    return df[mask]


def _mean_se(rows: pd.DataFrame) -> tuple[float, float, int]:
    """Mean over seeds, its SE (over seeds; from the measurement SE with one seed), seeds."""
    per_seed = rows.groupby("seed").agg(value=("value", "mean"), se=("se", "mean"))
    n = len(per_seed)
    if n > 1:
        return float(per_seed.value.mean()), float(per_seed.value.std(ddof=1) / math.sqrt(n)), n
    return float(per_seed.value.iloc[0]), float(per_seed.se.iloc[0]), 1


def _difference(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, float]:
    ma, sa, _ = _mean_se(a)
    mb, sb, _ = _mean_se(b)
    return ma - mb, math.sqrt(sa ** 2 + sb ** 2)


def _groups(df: pd.DataFrame, pair: list[str]):
    if not pair:
        yield (), df
        return
    yield from df.groupby(pair, sort=True)


def evaluate_claim(claim: dict, summary: pd.DataFrame, gradvar: pd.DataFrame) -> dict:
    """The claim's row of claims.csv."""
    check, tol = claim["check"], float(claim["tolerance"])
    df = select(metric_table(claim["metric"], summary, gradvar), claim.get("where"), filters=claim.get("filter"))
    pair = list(claim.get("pair", []))
    out = {k: claim.get(k) for k in ("name", "claim", "source", "check", "metric")}
    out.update(tolerance=tol, value=math.nan, uncertainty=math.nan, result="not run", n_cells=0, detail="")
    cells: list[pd.DataFrame] = []
    comparisons: list[tuple[str, float, float]] = []  # (label, difference, se): each must be < tol
    if check in ("less", "greater"):
        sign = 1.0 if check == "less" else -1.0
        a, b = select(df, claim["a"]), select(df, claim["b"])
        cells = [a, b]
        for key, ga in _groups(a, pair) if not (a.empty or b.empty) else ():
            gb = b if not pair else b[(b[pair].astype(str) == [str(v) for v in _tuple(key)]).all(axis=1)]
            if gb.empty:
                return {**out, "statistic": f"{check} (a - b)", "detail": f"no b cells for {_label(pair, key)}"}
            d, se = _difference(ga, gb)
            comparisons.append((_label(pair, key), sign * d, se))
        statistic = "mean_a - mean_b" + (" (worst group)" if pair else "")
    elif check in ("decreasing", "increasing"):
        sign = 1.0 if check == "decreasing" else -1.0
        a = select(df, claim["a"])
        cells = [a]
        along = claim["along"]
        for key, ga in _groups(a, pair):
            levels = sorted(ga[along].unique(), key=float)
            for lo, hi in zip(levels[:-1], levels[1:]):
                d, se = _difference(ga[ga[along] == hi], ga[ga[along] == lo])
                comparisons.append((f"{_label(pair, key)} {along} {lo}->{hi}".strip(), sign * d, se))
        statistic = f"change over consecutive {along} (worst)"
    elif check == "order":
        selected = [select(df, sel) for sel in claim["cells"]]
        cells = selected
        ranked = list(zip(claim["cells"], selected))
        for (s1, a), (s2, b) in zip(ranked[:-1], ranked[1:]):
            if a.empty or b.empty:
                break
            d, se = _difference(a, b)
            comparisons.append((f"{_fields(s1)} before {_fields(s2)}", d, se))
        statistic = "mean(better) - mean(worse) (worst consecutive pair)"
    elif check == "slope":
        a = select(df, claim["a"])
        cells = [a]
        by = a.groupby(claim["along"])[["value", "floor"]].mean() if not a.empty else \
            pd.DataFrame(columns=["value", "floor"], dtype=float)
        means = by.value[(by.value > 0) & (by.value >= FLOOR_MULTIPLE * by.floor)]
        out["statistic"] = f"slope of log {claim['metric']} on log {claim['along']}"
        if len(means) < 2:
            return {**out, "detail": "fewer than two values of " + claim["along"]}
        x, y = np.log(means.index.to_numpy(float)), np.log(means.to_numpy(float))
        slope, intercept = np.polyfit(x, y, 1)
        resid = y - (slope * x + intercept)
        se = math.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean()))) if len(x) > 2 else math.nan
        target = float(claim["target"])
        return {**out, "value": float(slope), "uncertainty": se, "n_cells": int(a.cell.nunique()),
                "result": "pass" if abs(slope - target) <= tol else "fail", "schedule": _schedule(summary, [a]),
                "detail": f"target {target:+g}; {claim['along']} in {', '.join(f'{v:g}' for v in means.index)}"}
    else:  # at_most
        a = select(df, claim["a"])
        cells = [a]
        if not a.empty:
            groups = [(_label(pair, key), *_mean_se(g)[:2]) for key, g in _groups(a, pair)]
            comparisons = [(label, m, se) for label, m, se in groups]
        statistic = "largest mean"
    out["statistic"] = statistic
    if any(c.empty for c in cells) or not comparisons:
        return {**out, "detail": "its cells did not all run"}
    label, worst, se = max(comparisons, key=lambda c: c[1])
    holds = all(d <= tol for _, d, _ in comparisons)  # signs are set so that every check reads d <= tol
    return {**out, "value": worst, "uncertainty": se, "n_cells": int(sum(c.cell.nunique() for c in cells)),
            "result": "pass" if holds else "fail", "schedule": _schedule(summary, cells),
            "detail": (f"worst: {label}; " if label else "") + f"{len(comparisons)} comparison(s)"}


def _tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _label(pair: list[str], key: Any) -> str:
    return " ".join(f"{p}={v}" for p, v in zip(pair, _tuple(key)))


def _fields(selector: dict) -> str:
    return "/".join(str(v) for v in selector.values())


def _schedule(summary: pd.DataFrame, cells: list[pd.DataFrame]) -> str:
    ids = set().union(*(set(c.cell) for c in cells))
    return "; ".join(sorted(summary[summary.cell.isin(ids)].schedule.dropna().unique()))


def claims_table(claims: list[dict], summary: pd.DataFrame, gradvar: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (module docstring)."""
    check_claims(claims)
    return pd.DataFrame([evaluate_claim(c, summary, gradvar) for c in claims], columns=COLUMNS)
