"""Benchmark figures, drawn with seaborn and saved as PNG and PDF.

``plot_all(tables, runs, out)`` reads the tables written by :func:`lvmbench.aggregate.aggregate`
and the run directories, and draws:

* ``nll_vs_k``: test NLL against training K (log x), per objective and estimator, one
  panel per experiment/dataset/model; error bars are the sd over seeds.
* ``bound_curve_<experiment>_<dataset>_<model>``: L_k against k (log x) per run (first
  seed), with log p(x) (exact where known, else L_K_eval) and the bound-ordering result.
* ``snr_vs_k_<experiment>_<dataset>_<model>_<objective>``: decoder and encoder SNR (mean
  over the group's parameter components, averaged over runs) against K on log-log axes per
  estimator, at the final snapshot or the exact optimum, with the Monte Carlo floor
  sqrt(2/(pi M)) drawn and points below 3x the floor hollow; each slope is fitted over the K
  above that line (or the legend says why there is none); only where the runs span at
  least two values of K.
* ``training_curves``: the training bound against the step, one panel per
  experiment/dataset/model.
* ``samples_<...>``: for binary-image models, decoder means of prior samples and
  reconstructions of test images (one run per experiment/dataset/model/objective:
  first seed, largest K, first estimator).
* ``gmm_<...>``: for Gaussian mixtures on 2-D data, the data with the model density,
  ancestral samples, and test points coloured by the exact posterior's and the
  encoder's most probable component (same choice of run).

A figure whose inputs are missing is skipped with a note on stderr.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from lvmbench.data import DATASETS  # noqa: E402
from lvmbench.errors import LvmbenchError  # noqa: E402
from lvmbench.io import atomic_write  # noqa: E402
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
        self._tables: dict[str, pd.DataFrame | None] = {}

    def table(self, name: str) -> pd.DataFrame | None:
        if name not in self._tables:
            path = self.dir / f"{name}.csv"
            df = pd.read_csv(path) if path.exists() and path.stat().st_size else None
            if df is None or df.empty:
                _note(f"{path} is missing or empty: figures that need it are skipped")
                df = None
            self._tables[name] = df
        return self._tables[name]

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
def nll_vs_k(inp: Inputs) -> Figures:
    s = inp.summary()
    if s is None or s.empty:
        _note("nll_vs_k: no evaluated runs with status ok")
        return
    s = _with_panel(s)
    g = sns.relplot(data=s, x="K", y="test_nll", hue="objective", style="estimator", col="panel",
                    col_wrap=min(3, s.panel.nunique()), kind="line", marker="o", errorbar="sd", err_style="bars",
                    height=3.2,
                    aspect=1.2, facet_kws={"sharey": False, "sharex": False})
    g.set_titles("{col_name}")
    g.set_axis_labels("K (training samples)", "test NLL (nats)")
    for panel, ax in g.axes_dict.items():
        _log_axis(ax, s.K[s.panel == panel])
        ax.ticklabel_format(axis="y", useOffset=False)
    yield "nll_vs_k", g.figure


def bound_curve(inp: Inputs) -> Figures:
    s, curve = inp.table("summary"), inp.table("bound_curve")
    if s is None or curve is None:
        _note("bound_curve: needs summary.csv and bound_curve.csv")
        return
    order = inp.table("ordering")
    if order is not None:
        s = s.merge(order[["cell", "worst_z"]], on="cell", how="left")
    s = s[s.cell.isin(curve.cell)]
    s = s[s.seed == s.groupby(PANEL).seed.transform("min")]
    for key, runs in s.groupby(PANEL, sort=True):
        fig, axes = _grid(len(runs))
        for ax, (_, r) in zip(axes, runs.iterrows()):
            c = curve[curve.cell == r.cell].sort_values("k")
            ax.errorbar(c.k, c["mean"], yerr=c.se, marker="o", ms=4, capsize=2, label="L_k")
            exact = pd.notna(r.exact_log_px)
            ax.axhline(r.exact_log_px if exact else r.test_log_px, color="k", ls="--", lw=1,
                       label="exact log p(x)" if exact else f"L_{int(r.K_eval)}")
            _log_axis(ax, c.k)
            verdict = ("ordering ok" if r.ordering_passed in (True, "True") else "ordering FAILED") + (
                f" (worst z={r.worst_z:.1f})" if "worst_z" in r and pd.notna(r.worst_z) else "")
            ax.set_title(f"{r.objective} K={r.K} {r.estimator} seed {r.seed}\n{verdict}", fontsize=8)
            ax.set_xlabel("k")
            ax.set_ylabel("L_k (nats)")
            ax.legend(fontsize=7)
        fig.suptitle("/".join(map(str, key)))
        fig.tight_layout()
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
        _note("training_curves: no train.csv in the runs")
        return
    df = _with_panel(pd.concat(frames, ignore_index=True))
    df = df.sort_values(["objective", "K", "estimator", "seed", "step"], kind="stable")
    df["setting"] = df.objective + " K=" + df.K.astype(str)
    g = sns.relplot(data=df, x="step", y="bound", hue="setting", style="estimator", col="panel",
                    col_wrap=min(3, df.panel.nunique()), kind="line", errorbar="sd", height=3.2, aspect=1.2,
                    facet_kws={"sharey": False, "sharex": False})
    g.set_titles("{col_name}")
    g.set_axis_labels("step", "training bound (nats)")
    yield "training_curves", g.figure


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
        x = data.test[:12]
        recon = _mean(model.likelihood(_mean(model.encoder(x))))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1.6]})
        for ax, img, title in zip(axes, (_mosaic(generated, shape, 8), _mosaic(torch.cat([x, recon]), shape, 12)),
                                  ("samples: decoder means of z ~ p(z)",
                                   "test images (top) and decoder means at encoder means (bottom)")):
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
    fig.tight_layout()
    yield "published", fig


FIGURES = (nll_vs_k, bound_curve, snr_vs_k, training_curves, samples, gmm, published)


def plot_all(tables: str | Path, runs: list[str | Path], out: str | Path, data_dir: str | None = None) -> list[Path]:
    """Draw every figure whose inputs exist into ``out`` (PNG and PDF); returns the files written.
    ``data_dir`` is where the runs' datasets are found (for samples and densities)."""
    inp, written = Inputs(tables, runs, data_dir), []
    Path(out).mkdir(parents=True, exist_ok=True)  # exists even when no figure has its inputs
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        for figure in FIGURES:
            for name, fig in figure(inp):
                written += save(fig, out, name)
    print(f"[lvmbench plot] {len(written)} files -> {out}", file=sys.stderr)
    return written


__all__ = ["plot_all", "save", "FIGURES", "SNR_COLUMN", *[f.__name__ for f in FIGURES]]
