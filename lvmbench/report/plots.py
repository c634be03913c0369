"""Benchmark figures, drawn with seaborn and saved as PNG and PDF.

``plot_all(tables, runs, out)`` reads the tables written by :func:`lvmbench.aggregate.aggregate`
and the run directories, and draws the figures of each experiment into
``out/<experiment>/<figure type>/<name>.png`` (and ``.pdf``):

* ``nll_vs_k``: test NLL against training K (log x), one panel per dataset/model; colour
  and marker tell the estimators apart, the line style the objectives; error bars are the
  sd over seeds. Cells that would flatten the rest (e.g. score-function gradients on
  continuous latents) are marked off-scale at the top edge with their value.
* ``bound_curve_<experiment>_<dataset>_<model>_<objective>``: per run (first seed), L_k against k (log
  x) with log p(x) (exact where known, else L_K_eval), and below it the paired ordering
  check: each consecutive difference with threshold x its paired standard error.
* ``snr_vs_k_<experiment>_<dataset>_<model>_<objective>``: decoder and encoder SNR (mean
  over the group's parameter components, averaged over runs) against K on log-log axes per
  estimator, at the final snapshot or the exact optimum, with the Monte Carlo floor
  sqrt(2/(pi M)) drawn and points below 3x the floor hollow; each slope is fitted over the K
  above that line (or the legend says why there is none); only where the runs span at
  least two values of K.
* ``training_curves``: the training bound against the step, one panel per
  dataset/model/objective; colour and marker per estimator, line width per K.
* ``samples_<...>``: for binary-image models, decoder means of prior samples and
  reconstructions of test images (one run per experiment/dataset/model/objective:
  first seed, largest K, first estimator).
* ``gmm_<...>``: for Gaussian mixtures on 2-D data, the data with the model density,
  ancestral samples, and test points coloured by the exact posterior's and the
  encoder's most probable component (same choice of run).

Every estimator has the same colour and marker in every figure (:func:`estimator_style`).
A figure whose inputs are missing is skipped with a note on stderr.
"""

from __future__ import annotations

import copy
import math
import re
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from lvmbench.data import DATASETS  # noqa: E402
from lvmbench.errors import LvmbenchError  # noqa: E402
from lvmbench.estimators import ESTIMATORS  # noqa: E402
from lvmbench.io import atomic_write  # noqa: E402
from lvmbench.objectives import OBJECTIVES  # noqa: E402
from lvmbench.report.aggregate import read_cell  # noqa: E402
from lvmbench.report.paper import SNR_COLUMN  # noqa: E402
from lvmbench.rng import forked_rng  # noqa: E402
from lvmbench.runs import RunDir, load_trained  # noqa: E402
from lvmbench.stats import FLOOR_MULTIPLE, snr_floor, snr_slope  # noqa: E402

FORMATS = ("png", "pdf")
DPI = 120
PANEL = ["experiment", "dataset", "model"]
Figures = Iterator[tuple[str, plt.Figure]]


def _note(message: str) -> None:
    print(f"[lvmbench plot] {message}", file=sys.stderr)


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", "_".join(map(str, parts))).strip("-")


def save(fig: plt.Figure, out: str | Path, name: str) -> list[Path]:
    """Save ``fig`` as out/name.png and out/name.pdf (atomically) and close it."""
    paths = [atomic_write(Path(out) / f"{name}.{ext}",
                          lambda p, ext=ext: fig.savefig(p, format=ext, dpi=DPI, bbox_inches="tight"))
             for ext in FORMATS]
    plt.close(fig)
    return paths


def _with_panel(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(panel=df[PANEL].astype(str).agg("/".join, axis=1))


def _grid(n: int, ncols: int = 4, size: tuple[float, float] = (3.4, 2.9)) -> tuple[plt.Figure, list[plt.Axes]]:
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


MARKERS = "osDPX*phH8d"  # no triangles: an upward triangle marks an off-scale cell
DASHES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3))]


def estimator_style(labels) -> dict[str, tuple]:
    """(colour, marker) per estimator label, the same in every figure: built-in estimators in
    the registry's order, other labels (options variants, plugins) after them by name."""
    order = [*ESTIMATORS.names(), *sorted(set(map(str, labels)) - set(ESTIMATORS.names()))]
    palette = sns.color_palette("tab10", 10)
    return {name: (palette[i % 10], MARKERS[i % len(MARKERS)]) for i, name in enumerate(order)}


def objective_dash(labels) -> dict[str, object]:
    """A line style per objective label, the same in every figure."""
    order = [*OBJECTIVES.names(), *sorted(set(map(str, labels)) - set(OBJECTIVES.names()))]
    return {name: DASHES[i % len(DASHES)] for i, name in enumerate(order)}


def on_scale_limit(values, factor: float = 5.0, least: int = 3) -> float | None:
    """The largest value still drawn to scale when some values lie so far above the rest
    that they would flatten it: the values above the widest gap among the sorted values
    that is more than ``factor`` times the spread below it, with at least half of them (and
    ``least``) below; None when every value fits."""
    v = np.sort(np.asarray([x for x in values if np.isfinite(x)], dtype=float))
    best, limit = factor, None
    for i in range(max(least, math.ceil(len(v) / 2)) - 1, len(v) - 1):
        spread = max(v[i] - v[0], 1e-9 * max(1.0, abs(v[i])))
        if (v[i + 1] - v[i]) / spread > best:
            best, limit = (v[i + 1] - v[i]) / spread, v[i]
    return limit


def _legend(fig: plt.Figure, style: dict, dash: dict, estimators, objectives, extra=()) -> None:
    """One legend right of the panels: estimators (colour and marker), objectives (line
    style) when there are several, then the ``extra`` handles."""
    handles = [Line2D([], [], color=style[e][0], marker=style[e][1], ls="-", label=e) for e in estimators]
    if len(objectives) > 1:
        handles += [Line2D([], [], color="0.3", ls=dash[o], label=f"objective {o}") for o in objectives]
    fig.legend(handles=[*handles, *extra], loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)


def _log_axis(ax: plt.Axes, values) -> None:
    """Log x axis ticked at the values themselves (K or k), not at powers of ten."""
    values = sorted({int(v) for v in values})
    ax.set_xscale("log")
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()


class Inputs:
    """The tables and run directories a figure may need; missing tables are noted once."""

    def __init__(self, tables: str | Path, runs: list[str | Path], data_dir: str | None = None):
        self.dir = Path(tables)
        self.cells = [read_cell(r) for r in runs]
        self.data_dir = data_dir
        self.experiment: str | None = None
        self._tables: dict[str, pd.DataFrame | None] = {}

    def experiments(self) -> list[str]:
        """The experiments of the runs, in their order."""
        return list(dict.fromkeys(c["experiment"] for c in self.cells))

    def only(self, experiment: str) -> "Inputs":
        """The same inputs restricted to one experiment's runs and table rows."""
        view = copy.copy(self)  # shares the loaded tables
        view.experiment, view.cells = experiment, [c for c in self.cells if c["experiment"] == experiment]
        return view

    def table(self, name: str) -> pd.DataFrame | None:
        if name not in self._tables:
            path = self.dir / f"{name}.csv"
            df = pd.read_csv(path) if path.exists() and path.stat().st_size else None
            if df is None or df.empty:
                _note(f"{path} is missing or empty: figures that need it are skipped")
                df = None
            self._tables[name] = df
        df = self._tables[name]
        if df is None or self.experiment is None:
            return df
        rows = df[df.experiment == self.experiment] if "experiment" in df else \
            df[df.cell.str.startswith(f"{self.experiment}/")] if "cell" in df else df
        return rows if len(rows) else None

    def summary(self) -> pd.DataFrame | None:
        s = self.table("summary")
        return None if s is None else s[s.status == "ok"]

    def trained(self, figure: str, keep: Callable[[dict], bool]) -> Iterator[tuple[str, object, object, object]]:
        """(figure name, cell, data, model on the CPU in eval mode) for one trained run per
        (experiment, dataset, model, objective) among those ``keep`` accepts: first seed,
        then largest K, then first estimator. Each figure draws from the global RNG seeded with 0,
        on a fork of the caller's."""
        chosen: dict[tuple, dict] = {}
        ranked = sorted((c for c in self.cells if keep(c) and RunDir(c["run"]).checkpoint.exists()),
                        key=lambda c: (c["seed"], -c["K"], c["estimator"]))
        for c in ranked:
            chosen.setdefault((c["experiment"], c["dataset"], c["model"], c["objective"]), c)
        if not chosen:
            _note(f"{figure}: no trained runs of the right kind")
        for key, c in chosen.items():
            try:
                cell, data, model, _, _ = load_trained(c["run"], device=torch.device("cpu"), data_dir=self.data_dir)
            except LvmbenchError as err:
                _note(f"{figure} {c['cell']}: cannot load the trained model ({err})")
                continue
            with forked_rng(torch.device("cpu"), seed=0):
                yield _slug(figure, *key), cell, data, model.eval()


# --------------------------------------------------------------------------------------------
# figures from the tables
# --------------------------------------------------------------------------------------------
def _off_scale_marker(ax: plt.Axes, x, value: float, colour, row: int, label: str = "") -> None:
    """An off-scale cell: an upward triangle in the band above the plotted range, its value
    written beside it; ``row`` stacks the cells of one K downwards."""
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    y = 0.96 - 0.075 * row
    ax.scatter([x], [y], marker="^", s=30, color=colour, transform=trans, clip_on=False, zorder=5,
               edgecolor="k", linewidth=0.4)
    ax.annotate(f"{value:.0f}{label}", (x, y), xycoords=trans, xytext=(5, 0), textcoords="offset points", ha="left",
                va="center", fontsize=6.5, color=colour)


def _dodge(labels) -> dict[str, float]:
    """A factor per label that spreads points of one K apart on a log axis, so that equal
    values (STL and DReG at K=1) stay visible."""
    labels = list(labels)
    return {label: math.exp(0.045 * (i - (len(labels) - 1) / 2)) for i, label in enumerate(labels)}


def nll_vs_k(inp: Inputs) -> Figures:
    s = inp.summary()
    if s is None or s.empty:
        _note(f"nll_vs_k {inp.experiment}: no evaluated runs with status ok")
        return
    style, dash = estimator_style(s.estimator), objective_dash(s.objective)
    panels = list(s.groupby(["dataset", "model"], sort=False))
    fig, axes = _grid(len(panels), ncols=3, size=(4.0, 3.2))
    off_any = False
    for ax, ((dataset, model), df) in zip(axes, panels):
        cells = df.groupby(["objective", "estimator", "K"], sort=False).test_nll.agg(["mean", "std"]).reset_index()
        limit = on_scale_limit(cells["mean"])
        on = cells["mean"] <= limit if limit is not None else pd.Series(True, index=cells.index)
        dodge = _dodge(dict.fromkeys(cells.estimator))
        for (objective, estimator), line in cells.groupby(["objective", "estimator"], sort=False):
            colour, marker = style[estimator]
            line = line.sort_values("K")
            kept = line[on[line.index]]
            ax.errorbar(kept.K * dodge[estimator], kept["mean"], yerr=kept["std"].fillna(0), color=colour,
                        marker=marker, ms=5, ls=dash[objective], lw=1.3, capsize=2)
        off = cells[~on].sort_values("mean")
        for row, (_, r) in zip(off.groupby("K").cumcount(), off.iterrows()):
            _off_scale_marker(ax, r.K * dodge[r.estimator], r["mean"], style[r.estimator][0], row,
                              f" ({r.objective})" if cells.objective.nunique() > 1 else "")
            off_any = True
        if len(off):  # room above the plotted range for the off-scale band
            lo, hi = cells[on]["mean"].min(), cells[on]["mean"].max()
            rows = int(off.groupby("K").size().max())
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + (0.08 + 0.1 * rows) * (hi - lo))
        _log_axis(ax, cells.K)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set(title=f"{dataset} / {model}", xlabel="K (training samples)", ylabel="test NLL (nats)")
    extra = [Line2D([], [], color="0.4", marker="^", ls="", markeredgecolor="k", markeredgewidth=0.4,
                    label="off-scale (NLL written)")] if off_any else []
    _legend(fig, style, dash, list(dict.fromkeys(s.estimator)), list(dict.fromkeys(s.objective)), extra)
    fig.suptitle(f"{inp.experiment}: test NLL (L_{int(s.K_eval.max())}) against training K; error bars: sd over "
                 "seeds", fontsize=10)
    fig.tight_layout()
    yield _slug("nll_vs_k", inp.experiment), fig


def _ordering_panel(ax: plt.Axes, checks: pd.DataFrame, ks: list[int], threshold: float) -> None:
    """The paired ordering checks of one run below its bound curve: each consecutive
    difference L_k' - L_k (and log p(x) - L_k at the largest k, where exact) with
    threshold x its paired standard error, at the geometric middle of its two k."""
    name = {f"L_{k}": k for k in ks}
    step = math.sqrt(ks[-1] / ks[-2]) if len(ks) > 1 else 2.0
    rows = []
    for _, c in checks.iterrows():
        lo, hi = name.get(c.lower), name.get(c.upper)
        if lo is not None and hi is not None and ks.index(hi) == ks.index(lo) + 1:
            rows.append((math.sqrt(lo * hi), c))
        elif lo == ks[-1] and str(c.upper).startswith("log p(x)"):
            rows.append((ks[-1] * step, c))
    for x, c in rows:
        ax.errorbar([x], [c.mean_diff], yerr=[threshold * c.se], fmt="o", ms=3.5, capsize=2,
                    color="C2" if c.passed else "C3")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("paired diff.", fontsize=7)
    if rows and rows[-1][0] > ks[-1]:  # the check against the exact log p(x) gets its own tick
        ax.set_xticks([*ks, rows[-1][0]], [*map(str, ks), "log p(x)"])
        ax.set_xlim(right=rows[-1][0] * step ** 0.5)


def bound_curve(inp: Inputs) -> Figures:
    s, curve = inp.table("summary"), inp.table("bound_curve")
    if s is None or curve is None:
        _note(f"bound_curve {inp.experiment}: needs summary.csv and bound_curve.csv")
        return
    order, checks = inp.table("ordering"), inp.table("ordering_checks")
    if order is not None:
        s = s.merge(order[["cell", "worst_z", "threshold"]], on="cell", how="left")
    s = s[s.cell.isin(curve.cell)]
    s = s[s.seed == s.groupby(PANEL).seed.transform("min")]
    for key, runs in s.groupby([*PANEL, "objective"], sort=True):
        n = len(runs)
        ncols = min(n, 4)
        fig = plt.figure(figsize=(3.4 * ncols, 3.6 * math.ceil(n / ncols)))
        subfigs = np.atleast_1d(fig.subfigures(math.ceil(n / ncols), ncols, squeeze=False)).ravel()
        for sub in subfigs[n:]:
            sub.set_visible(False)
        for i, (sub, (_, r)) in enumerate(zip(subfigs, runs.iterrows())):
            top, bottom = sub.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1], "hspace": 0.08})
            c = curve[curve.cell == r.cell].sort_values("k")
            top.errorbar(c.k, c["mean"], yerr=c.se, marker="o", ms=4, capsize=2, label="L_k ± SE")
            exact = pd.notna(r.exact_log_px)
            top.axhline(r.exact_log_px if exact else r.test_log_px, color="k", ls="--", lw=1,
                        label="exact log p(x)" if exact else f"L_{int(r.K_eval)} (log p(x) estimate)")
            _log_axis(bottom, c.k)
            top.set_ylabel("L_k (nats)")
            if i == 0:
                top.legend(fontsize=6, loc="lower right")
            threshold = r.threshold if "threshold" in r and pd.notna(r.threshold) else 3.0
            if checks is not None:
                _ordering_panel(bottom, checks[checks.cell == r.cell], [int(k) for k in c.k], threshold)
            bottom.set_xlabel("k")
            verdict = ("ordering ok" if r.ordering_passed in (True, "True") else "ordering FAILED") + (
                f", worst z = {r.worst_z:.1f}" if "worst_z" in r and pd.notna(r.worst_z) else "")
            top.set_title(f"K={r.K} {r.estimator} seed {r.seed}\n{verdict}", fontsize=8)
        fig.suptitle(f"{'/'.join(map(str, key))}: bound curves; below: paired differences ± "
                     f"{threshold:g} SE (pass: bar reaches 0 or above)", fontsize=10, y=1.02)
        yield _slug("bound_curve", *key), fig


def _slope_label(estimator: str, K: np.ndarray, snr: np.ndarray, floor: np.ndarray) -> str:
    slope, above = snr_slope(K, snr, floor)
    if math.isfinite(slope):
        used = K[above]
        return f"{estimator} (slope {slope:+.2f}, K={int(used.min())}..{int(used.max())})"
    return f"{estimator} ({'at the floor' if not above.any() else 'one K above the floor'}: no slope)"


def snr_vs_k(inp: Inputs) -> Figures:
    gv = inp.table("gradvar")
    if gv is None or SNR_COLUMN not in gv:
        _note("snr_vs_k: no gradient-variance rows")
        return
    if "final_step" not in gv:
        gv = gv.assign(final_step=gv.step == gv.groupby("cell").step.transform("max"))
    gv = gv[gv.final_step.astype(bool) & gv.skipped.isna() & (gv[SNR_COLUMN] > 0)]
    gv = gv.assign(floor=snr_floor(gv.draws.to_numpy(float)))
    keys = [*PANEL, "trained_objective"]
    for key, df in gv.groupby(keys, sort=True):
        if df.K.nunique() < 2:
            _note(f"snr_vs_k {'/'.join(map(str, key))}: only K={df.K.iloc[0]}; needs two values of K")
            continue
        estimators = sorted(df.estimator.unique())
        colours = dict(zip(estimators, sns.color_palette(n_colors=len(estimators))))
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, group in zip(axes, ("decoder", "encoder")):
            for est in estimators:
                m = df[(df.group == group) & (df.estimator == est)].groupby("K")[[SNR_COLUMN, "floor"]].mean()
                if m.empty:
                    continue
                K, snr, floor = m.index.to_numpy(float), m[SNR_COLUMN].to_numpy(), m.floor.to_numpy()
                above = snr >= FLOOR_MULTIPLE * floor
                ax.plot(K, snr, color=colours[est], label=_slope_label(est, K, snr, floor))
                ax.scatter(K[above], snr[above], color=colours[est], zorder=3)
                ax.scatter(K[~above], snr[~above], facecolors="white", edgecolors=colours[est], zorder=3)
            floors = df.groupby("K").floor.max()
            ax.plot(floors.index, floors.values, color="0.3", ls="--", lw=1, label="Monte Carlo floor sqrt(2/(pi M))")
            ax.plot(floors.index, FLOOR_MULTIPLE * floors.values, color="0.6", ls=":", lw=1,
                    label=f"{FLOOR_MULTIPLE:g} x floor: hollow points below, left out of the slopes")
            _log_axis(ax, df.K)
            ax.set(yscale="log", xlabel="K", ylabel=f"{group} SNR (mean over components)", title=group)
            ax.legend(fontsize=6.5)
        where = "at the exact optimum + noise" if (df.get("at") == "optimum").all() else "at the final snapshot"
        fig.suptitle(f"{'/'.join(map(str, key))}: gradient SNR {where}", fontsize=10)
        fig.tight_layout()
        yield _slug("snr_vs_k", *key), fig


def training_curves(inp: Inputs) -> Figures:
    curves = [(c, RunDir(c["run"]).read_table("train")) for c in inp.cells]
    frames = [curve.assign(**{k: c[k] for k in ("cell", *PANEL, "objective", "K", "estimator", "seed")})
              for c, curve in curves if curve is not None and not curve.empty]
    if not frames:
        _note(f"training_curves {inp.experiment}: no train.csv in the runs")
        return
    df = pd.concat(frames, ignore_index=True)
    style = estimator_style(df.estimator)
    Ks = sorted(df.K.unique())
    width = {K: 0.8 + 1.6 * i / max(1, len(Ks) - 1) for i, K in enumerate(Ks)}
    panels = list(df.groupby(["dataset", "model", "objective"], sort=False))
    fig, axes = _grid(len(panels), ncols=3, size=(4.0, 3.0))
    for ax, ((dataset, model, objective), d) in zip(axes, panels):
        mean = d.groupby(["estimator", "K", "step"], sort=False).bound.mean().reset_index()
        final = mean.groupby(["estimator", "K"], sort=False).bound.last()
        limit = on_scale_limit(-final)  # bounds: the off-scale ones lie far below
        off = final[-final > limit] if limit is not None else final.iloc[:0]
        shown = mean[~mean.set_index(["estimator", "K"]).index.isin(off.index)]
        for (estimator, K), line in shown.groupby(["estimator", "K"], sort=False):
            ax.plot(line.step, line.bound, color=style[estimator][0], lw=width[K], alpha=0.9,
                    marker=style[estimator][1], ms=3, markevery=max(1, len(line) // 5))
        # the y range of the second half of training, so the first steps do not flatten the end
        late = shown[shown.step >= shown.step.max() / 2].bound
        if len(late):
            lo, hi = late.min(), late.max()
            ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
        note = "\n".join(textwrap.wrap("off-scale (final bound): " + "; ".join(
            f"{e} K={K} ({v:.0f})" for (e, K), v in off.items()), 60)) if len(off) else ""
        ax.set_title(f"{dataset} / {model} / {objective}" + (f"\n{note}" if note else ""), fontsize=9)
        ax.set(xlabel="step", ylabel="training bound (nats)")
    extra = [Line2D([], [], color="0.3", lw=width[K], label=f"K={K}") for K in Ks] if len(Ks) > 1 else []
    _legend(fig, style, {}, list(dict.fromkeys(df.estimator)), [], extra)
    fig.suptitle(f"{inp.experiment}: training bound (mean over seeds; y axis: second half of training)",
                 fontsize=10)
    fig.tight_layout()
    yield _slug("training_curves", inp.experiment), fig


# --------------------------------------------------------------------------------------------
# figures from trained models
# --------------------------------------------------------------------------------------------
def _dataset_kind(c: dict) -> str | None:
    return DATASETS[c["dataset"]].obj.kind if c["dataset"] in DATASETS else None


def _mean(dist) -> torch.Tensor:
    """A distribution's mean, else its mode, else a Monte Carlo mean."""
    for attr in ("mean", "mode"):
        try:
            value = getattr(dist, attr)
        except NotImplementedError:
            continue
        if torch.isfinite(value).all():
            return value
    return dist.sample((100,)).float().mean(0)


def _mosaic(images: torch.Tensor, shape: tuple[int, int], ncols: int) -> np.ndarray:
    """(N, H*W) images -> one (rows*(H+1), ncols*(W+1)) array with 1-pixel gaps."""
    n, (h, w) = images.shape[0], shape
    rows = math.ceil(n / ncols)
    canvas = np.ones((rows * (h + 1), ncols * (w + 1)))
    for i, img in enumerate(images.reshape(n, h, w).cpu().numpy()):
        r, col = divmod(i, ncols)
        canvas[r * (h + 1): r * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = img
    return canvas


@torch.no_grad()
def samples(inp: Inputs) -> Figures:
    for name, cell, data, model in inp.trained("samples", lambda c: _dataset_kind(c) == "binary_image"):
        shape = data.image_shape or (28, 28)
        generated = _mean(model.likelihood(model.prior().sample((64,))))
        x = data.test[:24]
        recon = _mean(model.likelihood(_mean(model.encoder(x))))
        pairs = torch.cat([torch.cat([x[i:i + 8], recon[i:i + 8]]) for i in range(0, 24, 8)])  # rows: test, recon
        fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
        for ax, img, title in zip(axes, (_mosaic(generated, shape, 8), _mosaic(pairs, shape, 8)),
                                  ("samples: decoder means of z ~ p(z)",
                                   "test images, each row above its reconstruction\n(decoder means at encoder means)")):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(cell.id)
        fig.tight_layout()
        yield name, fig


@torch.no_grad()
def gmm(inp: Inputs) -> Figures:
    keep = lambda c: c.get("model_name") == "gmm" and _dataset_kind(c) == "continuous"  # noqa: E731
    for name, cell, data, model in inp.trained("gmm", keep):
        if data.dim != 2:
            _note(f"gmm {cell.id}: data are {data.dim}-D, not 2-D; skipped")
            continue
        x = data.test[:1000]
        lo, hi = data.train.min(0).values, data.train.max(0).values
        pad = 0.1 * (hi - lo)
        gx, gy = (torch.linspace(float(lo[i] - pad[i]), float(hi[i] + pad[i]), 150) for i in range(2))
        X, Y = torch.meshgrid(gx, gy, indexing="xy")
        log_density = model.log_marginal(torch.stack([X.reshape(-1), Y.reshape(-1)], -1)).reshape(X.shape)
        z, xs = model.sample(1000)
        panels = [("data and model log density (contours)", x, None), ("ancestral samples (colour: z)", xs, z),
                  ("test points: argmax p(z|x)", x, model.posterior(x).probs.argmax(-1)),
                  ("test points: argmax q(z|x)", x, model.encoder(x).probs.argmax(-1))]
        fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharex=True, sharey=True)
        for ax, (title, pts, colour) in zip(axes, panels):
            sns.scatterplot(x=pts[:, 0].numpy(), y=pts[:, 1].numpy(), s=6, ax=ax, legend=False, linewidth=0,
                            **({"hue": colour.numpy(), "palette": "tab10"} if colour is not None else
                               {"color": "0.5"}))
            ax.set_title(title, fontsize=9)
        top = float(log_density.max())
        axes[0].contour(X.numpy(), Y.numpy(), log_density.numpy(), levels=np.linspace(top - 8, top, 9),
                        cmap="viridis", linewidths=1)
        axes[0].set(xlim=(float(gx[0]), float(gx[-1])), ylim=(float(gy[0]), float(gy[-1])))
        axes[0].scatter(*model.loc.detach().T.numpy(), marker="x", color="r", s=40)
        fig.suptitle(cell.id)
        fig.tight_layout()
        yield name, fig


def published(inp: Inputs) -> Figures:
    """Each published number (marker) beside the reproduced mean +- sd over seeds, with the
    stated tolerance as a band; one row per number, one panel per metric."""
    pub = inp.table("published")
    if pub is None:
        return
    pub = pub.assign(label=[" ".join(str(v) for v in (r.experiment, r.model, r.objective,
                                                       "" if pd.isna(r.K) else f"K={int(r.K)}",
                                                       "" if pd.isna(r.estimator) else r.estimator,
                                                       "" if pd.isna(r.group) else r.group) if v)
                            for r in pub.itertuples()])
    metrics = list(pub.metric.unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 0.35 * len(pub) + 1.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        df = pub[pub.metric == metric].reset_index(drop=True)
        y = np.arange(len(df))
        ax.barh(y, 2 * df.tolerance, left=df.published - df.tolerance, color="0.9", label="published ± tolerance")
        ax.scatter(df.published, y, marker="|", s=200, color="black", label="published")
        ax.errorbar(df.reproduced_mean, y, xerr=df.reproduced_sd.fillna(0), fmt="o", color="C0",
                    label="reproduced (mean ± sd)")
        ax.set_yticks(y, df.label, fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel=metric, title=f"published vs reproduced: {metric}")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(inp.experiment, fontsize=10)
    fig.tight_layout()
    yield _slug("published", inp.experiment), fig


FIGURES = (nll_vs_k, bound_curve, snr_vs_k, training_curves, samples, gmm, published)


def plot_all(tables: str | Path, runs: list[str | Path], out: str | Path, data_dir: str | None = None) -> list[Path]:
    """Draw every figure whose inputs exist into ``out/<experiment>/<figure type>/`` (PNG and
    PDF); returns the files written. ``data_dir`` is where the runs' datasets are found (for
    samples and densities)."""
    inp, written = Inputs(tables, runs, data_dir), []
    Path(out).mkdir(parents=True, exist_ok=True)  # exists even when no figure has its inputs
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        for experiment in inp.experiments():
            for figure in FIGURES:
                for name, fig in figure(inp.only(experiment)):
                    written += save(fig, Path(out) / experiment / figure.__name__, name)
    print(f"[lvmbench plot] {len(written)} files -> {out}", file=sys.stderr)
    return written


__all__ = ["plot_all", "save", "estimator_style", "objective_dash", "on_scale_limit", "FIGURES", "SNR_COLUMN",
           *[f.__name__ for f in FIGURES]]
