"""Collect run directories into tidy results tables (CSV, Markdown, LaTeX).

``aggregate(runs, out)`` reads each run's cell.json, train.json, eval.json and
gradvar.csv, after checking that each of them is of the cell its cell.json names (a
hand-edited or copied file is refused with one line, never shown under another cell's
label), and replaces ``out`` as a whole with (nothing is replaced when a write fails,
e.g. on a full disk):

* ``summary.csv``: one row per run (with the amortization gap where ``lvmbench amortize`` ran) (a run not yet evaluated keeps a row of NaNs),
  with a ``status`` column: ``ok``, ``not trained`` (no train.json), ``not evaluated``
  (no eval.json) or ``non-finite log p(x)``. Only ``ok`` rows enter the grouped tables.
* ``bound_curve.csv``: the bound curve L_k in long format (cell, k, mean, se).
* ``summary_grouped.csv``, ``summary.md``, ``summary.tex``: mean and standard deviation
  over seeds of test log p(x) and NLL = -log p(x), exact log p(x), active units.
* ``ordering.csv`` / ``ordering.md`` (one row per evaluated run, with the reference its
  checks used: exact log p(x), AIS, the largest-K estimate, and on simulated data the BDMC
  upper bound) and ``ordering_checks.csv`` (every check, with its data and reference): the
  bound-ordering check L_1 <= ... <= L_K_eval [<= log p(x)] [<= BDMC upper], AIS <= log p(x)
  and the BDMC upper bound.
* ``sandwich.csv`` / ``sandwich.md``: for the runs evaluated with AIS, AIS log p(x) beside
  L_K_eval on the same test points, and the BDMC sandwich on simulated data (lower, upper,
  width).
* ``gradvar.csv`` (every run's rows, skipped estimators kept with their reason) and
  ``gradvar.md``: SNR (mean and median over components, the Monte Carlo floor and the
  fraction of components at it), variance and bias at the final snapshot (or the exact
  optimum) by estimator, K and group, and the biased estimators with their condition and
  measured relative bias.
* ``skipped.csv`` / ``skipped.md``: the combinations the plan left out, with reasons.
* ``runs.md``: one readable row per run (status, log p(x) with its standard error, bound
  ordering, training, device, version).

Every Markdown page also comes as a self-contained HTML page (``summary.html``,
``runs.html``, ``ordering.html``, ``gradvar.html``, ``skipped.html``, ``published.html``),
which ``snakemake --report`` shows. Markdown, LaTeX and HTML are written by :func:`render`
and :func:`page_files`, so neither tabulate nor jinja2 is needed.
"""

from __future__ import annotations

import html
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lvmbench.errors import LvmbenchError
from lvmbench.io import atomic_write, replace_dir, save_csv
from lvmbench.report.claims import claims_table
from lvmbench.report.paper import describe_schedule, published_table
from lvmbench.runs import RunDir

RUN_KEYS = ["experiment", "dataset", "model", "objective", "K", "estimator", "seed"]
GROUP_KEYS = RUN_KEYS[:-1]
SUMMARY_COLUMNS = ["cell", *RUN_KEYS, "model_name", "objective_name", "status", "test_log_px", "test_log_px_se",
                   "test_nll", "K_eval", "n_test", "exact_log_px", "exact_log_px_se", "ess_mean", "bound_curve",
                   "active_units", "ordering_passed", "ordering_reference", "ais_log_px", "ais_log_px_se", "ais_gain",
                   "ais_gain_se", "ais_n_test", "bdmc_lower", "bdmc_upper", "bdmc_width", "bdmc_width_se",
                   "bdmc_points", "amortization_gap", "amortization_gap_se", "final_train_bound", "steps", "schedule",
                   "wall_time", "device", "lvmbench_version", "git_commit", "run"]
INT_COLUMNS = ["K_eval", "n_test", "ais_n_test", "bdmc_points", "steps"]  # missing where not measured
GROUPED_COLUMNS = [*GROUP_KEYS, "n_seeds", "log_px_mean", "log_px_sd", "nll_mean", "nll_sd", "exact_log_px_mean",
                   "exact_log_px_sd", "active_units", "n_excluded"]
ORDERING_COLUMNS = ["cell", *RUN_KEYS, "passed", "reference", "simulated_reference", "worst_z", "worst", "threshold",
                    "n_checks", "n_failed"]
CHECK_COLUMNS = ["cell", "data", "reference", "lower", "upper", "mean_diff", "se", "z", "n", "passed"]
SANDWICH_COLUMNS = ["cell", *RUN_KEYS, "ais_n_test", "L_K_eval", "ais_log_px", "ais_gain", "ais_gain_se",
                    "ais_acceptance", "temperatures", "chains", "bdmc_points", "simulated_L_K_eval", "bdmc_lower",
                    "bdmc_upper", "bdmc_width", "bdmc_width_se", "simulated_exact_log_px"]
CURVE_COLUMNS = ["cell", "k", "mean", "se"]
SKIPPED_COLUMNS = [*RUN_KEYS, "reason"]
GRADVAR_METRICS = ["snr_mean", "snr_median", "snr_floor", "frac_at_floor", "var_mean", "grad_norm", "bias",
                   "relative_bias", "bias_noise", "mse"]


def _warn(message: str) -> None:
    print(f"[lvmbench aggregate] {message}", file=sys.stderr)


def read_cell(run: str | Path) -> dict:
    """The run's training spec as a dict with its ``cell`` id and ``run`` path added, once
    every record of the directory is known to be of that cell (:meth:`RunDir.check_records`)."""
    cell = RunDir(run).check_records()
    return {**cell.to_dict(), "cell": cell.id, "run": str(run)}


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _summary_row(c: dict, trained: dict | None, ev: dict | None, amortization: dict | None) -> dict:
    ev_, tr, am = ev or {}, trained or {}, amortization or {}
    log_px = ev_.get("log_px", math.nan)
    exact = ev_.get("exact_log_px")
    if trained is None:
        status = "not trained"
    elif tr.get("status") == "diverged":
        status = f"diverged at step {tr['diverged_at']}"
    elif ev is None:
        status = "not evaluated"
    elif not _finite(log_px, ev_.get("log_px_se")) or (exact is not None and not _finite(exact)):
        status = "non-finite log p(x)"
    else:
        status = "ok"
    units = ev_.get("active_units") or []
    ais, bdmc = ev_.get("ais") or {}, ev_.get("bdmc") or {}
    made = tr.get("provenance") or {}  # how the run was trained (lvmbench.provenance)
    commit = made.get("git_commit")
    return {
        **{k: c[k] for k in ("cell", *RUN_KEYS, "model_name", "objective_name", "run")},
        "status": status, "test_log_px": log_px, "test_log_px_se": ev_.get("log_px_se", math.nan),
        "test_nll": -log_px, "K_eval": ev_.get("K_eval"), "n_test": ev_.get("n_test"),
        "exact_log_px": math.nan if exact is None else exact,
        "exact_log_px_se": ev_.get("exact_log_px_se") if exact is not None else math.nan,
        "ess_mean": ev_.get("ess_mean", math.nan),
        "bound_curve": ";".join(f"{p['k']}:{p['mean']:.4f}" for p in ev_.get("bound_curve", [])),
        "active_units": "+".join(map(str, units)) if units else "",
        "ordering_passed": ev_.get("ordering_passed"), "ordering_reference": ev_.get("ordering_reference"),
        "ais_log_px": ais.get("log_px", math.nan), "ais_log_px_se": ais.get("log_px_se", math.nan),
        "ais_gain": ais.get("gain", math.nan), "ais_gain_se": ais.get("gain_se", math.nan),
        "ais_n_test": ais.get("n_points"), "bdmc_lower": bdmc.get("lower", math.nan),
        "bdmc_upper": bdmc.get("upper", math.nan), "bdmc_width": bdmc.get("width", math.nan),
        "bdmc_width_se": bdmc.get("width_se", math.nan), "bdmc_points": bdmc.get("n_points"),
        "amortization_gap": am.get("gap", math.nan), "amortization_gap_se": am.get("gap_se", math.nan),
        "final_train_bound": tr.get("final_bound") if tr.get("final_bound") is not None else math.nan,
        "steps": tr.get("steps"),
        "schedule": describe_schedule(c.get("train", {})),
        "wall_time": tr.get("wall_time", math.nan), "device": tr.get("device_name") or tr.get("device"),
        "lvmbench_version": made.get("lvmbench_version"),
        "git_commit": commit and commit[:12] + ("+dirty" if made.get("git_dirty") else ""),
    }


def _sandwich_row(ids: dict, ev: dict) -> dict:
    """AIS and BDMC of one evaluated run (NaN where BDMC did not run)."""
    ais, bdmc = ev["ais"], ev.get("bdmc") or {}
    return {**ids, "ais_n_test": ais["n_points"], "L_K_eval": ais["L_K_eval"], "ais_log_px": ais["log_px"],
            "ais_gain": ais["gain"], "ais_gain_se": ais["gain_se"], "ais_acceptance": ais["acceptance"],
            "temperatures": ais["settings"]["temperatures"], "chains": ais["settings"]["chains"],
            "bdmc_points": bdmc.get("n_points"), "simulated_L_K_eval": bdmc.get("L_K_eval", math.nan),
            "bdmc_lower": bdmc.get("lower", math.nan), "bdmc_upper": bdmc.get("upper", math.nan),
            "bdmc_width": bdmc.get("width", math.nan), "bdmc_width_se": bdmc.get("width_se", math.nan),
            "simulated_exact_log_px": bdmc.get("exact_log_px") if bdmc.get("exact_log_px") is not None else math.nan}


def collect(runs: list[str | Path]) -> dict[str, pd.DataFrame]:
    """Read every run directory into the raw tables (summary, bound_curve, ordering,
    ordering_checks, sandwich, gradvar)."""
    rows, curves, ordering, checks, sandwich, gradvar = [], [], [], [], [], []
    for run in runs:
        rd = RunDir(run)
        c = read_cell(run)
        trained, ev = rd.read_json("train"), rd.read_json("eval")
        if trained is None:
            _warn(f"{run} ({c['cell']}) has no train.json: training did not finish; its row has status "
                  f"'not trained'")
        rows.append(_summary_row(c, trained, ev, rd.read_json("amortization")))
        ids = {k: c[k] for k in ("cell", *RUN_KEYS)}
        if ev is not None and "status" not in ev:  # a diverged run is not evaluated
            curves += [{"cell": c["cell"], **p} for p in ev.get("bound_curve", [])]
            checks += [{"cell": c["cell"], **chk} for chk in ev.get("ordering_checks", [])]
            failed = sum(not chk["passed"] for chk in ev.get("ordering_checks", []))
            ordering.append({**ids, "passed": ev.get("ordering_passed"), "reference": ev.get("ordering_reference"),
                             "simulated_reference": ev.get("ordering_simulated_reference"),
                             "worst_z": ev.get("ordering_worst_z"), "worst": ev.get("ordering_worst"),
                             "threshold": ev.get("ordering_threshold"),
                             "n_checks": len(ev.get("ordering_checks", [])), "n_failed": failed})
            if ev.get("ais"):
                sandwich.append(_sandwich_row(ids, ev))
        table = rd.read_table("gradvar")
        if table is not None:
            gradvar.append(table)
    ids = [r["cell"] for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise LvmbenchError(f"the same cell appears in several run directories: {', '.join(dupes)}")
    gv = pd.concat(gradvar, ignore_index=True) if gradvar else pd.DataFrame(columns=["cell", "step"])
    gv["final_step"] = gv["step"] == gv.groupby("cell")["step"].transform("max")
    return {"summary": pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({k: "Int64" for k in INT_COLUMNS}),
            "bound_curve": pd.DataFrame(curves, columns=CURVE_COLUMNS),
            "ordering": pd.DataFrame(ordering, columns=ORDERING_COLUMNS),
            "ordering_checks": pd.DataFrame(checks, columns=CHECK_COLUMNS),
            "sandwich": pd.DataFrame(sandwich, columns=SANDWICH_COLUMNS).astype(
                {"ais_n_test": "Int64", "bdmc_points": "Int64"}),
            "gradvar": gv}


def group_seeds(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds of the ``ok`` runs per (experiment, dataset, model, objective,
    K, estimator); ``n_excluded`` counts the group's runs left out by their status."""
    ok = summary[summary.status == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=GROUPED_COLUMNS)
    g = ok.groupby(GROUP_KEYS, sort=True)
    out = pd.DataFrame({
        "n_seeds": g.size(), "log_px_mean": g.test_log_px.mean(), "log_px_sd": g.test_log_px.std(),
        "nll_mean": g.test_nll.mean(), "nll_sd": g.test_nll.std(),
        "exact_log_px_mean": g.exact_log_px.mean(), "exact_log_px_sd": g.exact_log_px.std(),
        "active_units": g.active_units.agg(lambda s: ", ".join(dict.fromkeys(v for v in s if v))),
    }).reset_index()
    excluded = summary[summary.status != "ok"].groupby(GROUP_KEYS).size().rename("n_excluded").reset_index()
    out = out.merge(excluded, on=GROUP_KEYS, how="left")
    out["n_excluded"] = out["n_excluded"].fillna(0).astype(int)
    return out[GROUPED_COLUMNS]


GRADVAR_KEYS = ["experiment", "dataset", "model", "trained_objective", "K", "estimator", "group"]


def gradvar_table(gradvar: pd.DataFrame) -> pd.DataFrame:
    """Gradient metrics at each run's final snapshot (or the exact optimum), averaged over the
    runs (seeds and the estimators they were trained with) of a (experiment, dataset, model,
    objective, K); metrics an older gradvar.csv lacks are NaN."""
    if gradvar.empty or "skipped" not in gradvar:
        return pd.DataFrame(columns=[*GRADVAR_KEYS, "n_runs", *GRADVAR_METRICS])
    final = gradvar[gradvar.final_step & gradvar.skipped.isna()].reindex(
        columns=sorted({*gradvar.columns, *GRADVAR_METRICS}))
    g = final.groupby(GRADVAR_KEYS, sort=True)
    return g[GRADVAR_METRICS].mean().assign(n_runs=g.cell.nunique()).reset_index()[[*GRADVAR_KEYS, "n_runs",
                                                                                     *GRADVAR_METRICS]]


def biased_table(gradvar: pd.DataFrame) -> pd.DataFrame:
    """The estimators measured where they are biased: their declared condition (``biased``)
    and, where an exact gradient exists, the measured encoder bias relative to the exact
    gradient's norm (mean over runs, at the final snapshot or the optimum)."""
    columns = ["estimator", "trained_objective", "K", "condition", "relative_bias", "bias", "bias_noise", "n_runs"]
    if gradvar.empty or "biased" not in gradvar:
        return pd.DataFrame(columns=columns)
    rows = gradvar[gradvar.final_step & gradvar.biased.notna() & (gradvar.group == "encoder")].reindex(
        columns=sorted({*gradvar.columns, "relative_bias", "bias_noise"}))
    g = rows.groupby(["estimator", "trained_objective", "K", "biased"], sort=True)
    out = g[["relative_bias", "bias", "bias_noise"]].mean().assign(n_runs=g.cell.nunique()).reset_index()
    return out.rename(columns={"biased": "condition"})[columns]


# --------------------------------------------------------------------------------------------
# Markdown and LaTeX
# --------------------------------------------------------------------------------------------
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def render(df: pd.DataFrame, fmt: str = "md") -> str:
    """A table of strings as GitHub Markdown (``md``) or a LaTeX tabular (``tex``);
    '±' becomes $\\pm$ in LaTeX."""
    cells = df.map(lambda v: "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v))
    if fmt == "md":
        lines = [list(cells.columns), ["---"] * cells.shape[1], *cells.values.tolist()]
        return "\n".join("| " + " | ".join(v.replace("|", r"\|") for v in line) + " |" for line in lines) + "\n"

    def tex(v: str) -> str:
        return "".join(LATEX_SPECIAL.get(ch, ch) for ch in v).replace("±", r"$\pm$")

    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    body = [" & ".join(map(tex, row)) + r" \\" for row in [list(cells.columns), *cells.values.tolist()]]
    return "\n".join([rf"\begin{{tabular}}{{{align}}}", r"\toprule", body[0], r"\midrule", *body[1:],
                      r"\bottomrule", r"\end{tabular}"]) + "\n"


def _pm(mean: pd.Series, sd: pd.Series, digits: int = 2) -> list[str]:
    """'mean ± sd' (sd left out when undefined, i.e. one seed); '' when the mean is NaN."""
    return ["" if pd.isna(m) else f"{m:.{digits}f}" + ("" if pd.isna(s) else f" ± {s:.{digits}f}")
            for m, s in zip(mean, sd)]


def _display_summary(grouped: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        **{k: grouped[k] for k in GROUP_KEYS}, "seeds": grouped.n_seeds,
        "test log p(x)": _pm(grouped.log_px_mean, grouped.log_px_sd),
        "NLL": _pm(grouped.nll_mean, grouped.nll_sd),
        "exact log p(x)": _pm(grouped.exact_log_px_mean, grouped.exact_log_px_sd),
        "active units": grouped.active_units,
    })


TABLE_SUFFIXES = (".csv", ".md", ".tex", ".html")


def _check_out(out: Path) -> None:
    """The tables directory is replaced as a whole (:func:`lvmbench.io.replace_dir`), so it
    may hold nothing but tables: anything else there would be lost."""
    if not out.exists():
        return
    if not out.is_dir():
        raise LvmbenchError(f"the tables directory {out} is a file")
    foreign = sorted(p.name for p in out.iterdir() if p.is_dir() or p.suffix not in TABLE_SUFFIXES)
    if foreign:
        raise LvmbenchError(f"the tables directory {out} holds {foreign[0]}, which aggregate does not write; the "
                            f"set of tables replaces the directory as a whole, so give it a directory of its own")


def _write_all(files: dict[str, pd.DataFrame | str], directory: Path) -> None:
    for name, content in files.items():
        if isinstance(content, pd.DataFrame):
            save_csv(content, directory / name)
        else:
            atomic_write(directory / name, lambda p, text=content: p.write_text(text))


def _fmt(df: pd.DataFrame, digits: str = ".3g") -> pd.DataFrame:
    return df.apply(lambda s: s.map(lambda v: format(v, digits) if isinstance(v, float) and not np.isnan(v)
                                    else v) if s.dtype.kind == "f" else s)


#: a page: its title, then paragraphs (str), tables (DataFrame) and ("h2", heading) sections
Page = list
NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?( ± [-+]?[\d.]+(e[-+]?\d+)?)?$|^-?inf$|^nan$", re.I)
STYLE = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.2em 1.6em;color:#222;"
         "line-height:1.4}h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}p{max-width:60em}"
         "table{border-collapse:collapse;font-size:13px}th,td{padding:3px 9px;border-bottom:1px solid #ddd;"
         "text-align:left;white-space:nowrap}th{background:#f2f2f2;position:sticky;top:0}"
         "td.n{text-align:right;font-variant-numeric:tabular-nums}tbody tr:nth-child(even){background:#fafafa}"
         "tbody tr:hover{background:#eef4ff}")


def _html_table(df: pd.DataFrame) -> str:
    cells = df.map(lambda v: "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cells.columns)
    rows = "".join("<tr>" + "".join(f'<td class="n">{html.escape(v)}</td>' if NUMBER.match(v)
                                    else f"<td>{html.escape(v)}</td>" for v in row) + "</tr>\n"
                   for row in cells.values.tolist())
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n"


def page_files(page: Page, name: str) -> dict[str, str]:
    """``name.md`` and ``name.html`` (their texts by file name) from one page: its title
    first, then paragraphs, tables and ``("h2", heading)`` sections."""
    title, *blocks = page
    md, body = [f"# {title}\n\n"], [f"<h1>{html.escape(title)}</h1>\n"]
    for block in blocks:
        if isinstance(block, pd.DataFrame):
            md.append(render(block))
            body.append(_html_table(block))
        elif isinstance(block, tuple):
            md.append(f"\n## {block[1]}\n\n")
            body.append(f"<h2>{html.escape(block[1])}</h2>\n")
        else:
            md.append(f"{block}\n\n")
            body.append(f"<p>{html.escape(block)}</p>\n")
    return {f"{name}.md": "".join(md),
            f"{name}.html": f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
                            f"</title><style>{STYLE}</style></head>\n<body>\n{''.join(body)}</body></html>\n"}


def _summary_page(summary: pd.DataFrame, grouped: pd.DataFrame) -> Page:
    page = ["Test log-likelihood", "Mean ± standard deviation over seeds of the test log p(x) (estimated by "
            "L_K_eval) and NLL = -log p(x); exact log p(x) where the model has it.", _display_summary(grouped)]
    flagged = summary[summary.status != "ok"]
    if len(flagged):
        page += [("h2", "Runs left out of the means"), flagged[["cell", "status", "test_log_px"]]]
    return page


def _runs_page(summary: pd.DataFrame, ordering: pd.DataFrame) -> Page:
    worst = ordering.set_index("cell").worst_z if len(ordering) else pd.Series(dtype=float)
    runs = pd.DataFrame({
        "cell": summary.cell, "status": summary.status,
        "test log p(x) ± SE": _pm(summary.test_log_px, summary.test_log_px_se, 3),
        "exact log p(x)": _pm(summary.exact_log_px, pd.Series(math.nan, index=summary.index), 3),
        "K_eval": summary.K_eval, "ESS": _fmt(summary[["ess_mean"]]).ess_mean,
        "ordering": [("" if pd.isna(p) else ("passed" if p else "FAILED"))
                     + ("" if pd.isna(worst.get(c)) else f" (worst z {worst[c]:.1f})")
                     for c, p in zip(summary.cell, summary.ordering_passed)],
        "train bound": _pm(summary.final_train_bound, pd.Series(math.nan, index=summary.index)),
        "schedule": summary.schedule, "wall time (s)": _fmt(summary[["wall_time"]]).wall_time,
        "device": summary.device, "lvmbench": summary.lvmbench_version, "commit": summary.git_commit,
    })
    return ["Runs", f"{len(summary)} runs, {int((summary.status == 'ok').sum())} with status ok. Test log p(x) "
            "is L_K_eval with its standard error over test points; the ordering check is L_k <= L_k' <= log p(x) "
            "on paired per-point differences (worst z-score in brackets).", runs]


def aggregate(runs: list[str | Path], out: str | Path, skipped: str | Path | None = None,
              published: list[dict] | None = None, claims: list[dict] | None = None) -> dict[str, pd.DataFrame]:
    """Write the results tables for ``runs`` into ``out``; returns the tables by name.
    ``published`` (an experiment config's list of paper numbers) adds ``published.csv``
    and ``published.md``: each reproduced number beside the published one. ``claims`` (its
    list of paper claims, :mod:`lvmbench.report.claims`) adds ``claims.csv`` and
    ``claims.md``: each claim checked, with its statistic, uncertainty and schedule."""
    if not runs:
        raise LvmbenchError("no run directories given")
    out = Path(out)
    _check_out(out)
    tables = collect(runs)
    summary = tables["summary"]
    tables["summary_grouped"] = grouped = group_seeds(summary)
    tables["gradvar_final"] = gv = gradvar_table(tables["gradvar"])
    files: dict[str, pd.DataFrame | str] = {
        f"{name}.csv": tables[name]
        for name in ("summary", "bound_curve", "summary_grouped", "ordering", "ordering_checks", "sandwich",
                     "gradvar")}
    files.update(page_files(_summary_page(summary, grouped), "summary"))
    files["summary.tex"] = render(_display_summary(grouped), "tex")
    order = tables["ordering"]
    files.update(page_files(_runs_page(summary, order), "runs"))
    files.update(page_files(
        ["Bound ordering", f"{int(order.passed.fillna(False).astype(bool).sum())} of {len(order)} evaluated runs pass "
         "L_1 <= ... <= L_K_eval [<= log p(x)] [<= BDMC upper], and AIS below log p(x) and the BDMC upper bound: "
         "each check compares two bounds on the same points, and fails when the mean paired difference lies more "
         "than threshold standard errors below zero. `reference` is the top of the test-data chain each L_k is "
         "checked against: `exact` log p(x), or `largest_k` (L_K_eval itself, a circular check); "
         "`simulated_reference` is `bdmc_upper` where the BDMC sandwich ran on simulated data. AIS against "
         "L_K_eval is the `ais_gain` of the sandwich table, not a check: both are stochastic lower bounds.",
         _fmt(order[["cell", "passed", "reference", "simulated_reference", "worst", "worst_z", "threshold",
                     "n_checks", "n_failed"]])], "ordering"))
    files.update(page_files(
        ["log p(x) by AIS, and the BDMC sandwich", "AIS (Neal 2001; HMC as in Wu et al. 2017) on the first "
         "`ais_n_test` test points beside L_K_eval on the same points (`ais_gain` = AIS - L_K_eval, paired, with its "
         "SE); the BDMC sandwich (Grosse et al. 2015) on `bdmc_points` points simulated from the model: forward AIS "
         "(lower) and reverse AIS from the exact posterior sample (upper), both stochastic bounds on log p(x), and "
         "the width upper - lower (docs/measurements.md).", _fmt(tables["sandwich"].drop(columns=RUN_KEYS), ".5g")],
        "sandwich"))

    tables["biased"] = biased = biased_table(tables["gradvar"])
    gv_page = ["Gradient signal-to-noise ratio and variance",
               "At each run's final snapshot, or at the exact optimum plus noise for runs measured `at: optimum`; "
               "mean over the runs of each (experiment, dataset, model, trained objective, K): seeds and training "
               "estimators. Each draw is the gradient of the bound summed over the minibatch. `snr_mean` / "
               "`snr_median`: mean / median over the group's parameter components of |E[g]| / std[g]; `snr_floor` = "
               "sqrt(2 / (pi draws)), the SNR estimate of a component with no signal; `frac_at_floor`: the fraction "
               "of components below 3 x the floor. `relative_bias` = ||E[g] - exact|| / ||exact|| where an exact "
               "gradient exists; `bias_noise` is the bias an unbiased estimator would show from Monte Carlo error "
               "alone.", _fmt(gv)]
    if len(biased):
        gv_page += [("h2", "Biased estimators"), "Each estimator measured where its declaration says it is biased, "
                    "with the condition, and the measured encoder-gradient bias relative to the exact gradient where "
                    "one exists (compare with `bias_noise`).", _fmt(biased)]
    raw = tables["gradvar"]
    if "skipped" in raw and raw.skipped.notna().any():
        gone = raw[raw.skipped.notna()].drop_duplicates(["estimator", "skipped"])
        gv_page += [("h2", "Estimators not measured"), gone[["estimator", "K", "skipped"]]]
    files.update(page_files(gv_page, "gradvar"))

    if skipped is not None:
        if not Path(skipped).exists():
            raise LvmbenchError(f"skipped-combinations file {skipped} does not exist")
        try:
            tables["skipped"] = sk = pd.read_csv(skipped)
        except pd.errors.EmptyDataError:
            tables["skipped"] = sk = pd.DataFrame(columns=SKIPPED_COLUMNS)
        files["skipped.csv"] = sk
        files.update(page_files(["Skipped combinations", f"{len(sk)} combinations were not run.",
                                 *([sk] if len(sk) else [])], "skipped"))
    if published:
        tables["published"] = pub = published_table(published, summary, tables["gradvar"])
        hits = pub.within_tolerance.dropna()
        files["published.csv"] = pub
        files.update(page_files(
            ["Published vs reproduced", f"{int(hits.sum())} of {len(hits)} reproduced numbers lie within the "
             f"stated tolerance of the published ones ({len(pub) - len(hits)} not run). difference = "
             "reproduced mean - published.", _fmt(pub, ".5g")], "published"))
    if claims:
        tables["claims"] = cl = claims_table(claims, summary, tables["gradvar"])
        counts = cl.result.value_counts()
        files["claims.csv"] = cl
        files.update(page_files(
            ["Paper claims", f"{counts.get('pass', 0)} of {len(cl)} claims pass, {counts.get('fail', 0)} fail, "
             f"{counts.get('not run', 0)} not run (their cells did not all run, or not ok). value ± uncertainty: "
             "the claim's statistic and one standard error over seeds (lvmbench.report.claims); a claim holds at the "
             "schedule it was run at, given in the last column.",
             _fmt(cl.assign(value=_pm(cl.value, cl.uncertainty, 3)).drop(columns=["uncertainty"]), ".3g")],
            "claims"))
    replace_dir(out, lambda directory: _write_all(files, directory))
    n_bad = int((summary.status != "ok").sum())
    print(f"[lvmbench aggregate] {len(summary)} runs, {len(grouped)} groups"
          + (f", {n_bad} flagged (see summary.csv status)" if n_bad else "") + f" -> {out}", file=sys.stderr)
    return tables


__all__ = ["aggregate", "collect", "group_seeds", "gradvar_table", "read_cell", "render", "page_files", "RUN_KEYS",
           "GROUP_KEYS", "SUMMARY_COLUMNS"]
