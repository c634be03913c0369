"""Gradient variance and signal-to-noise ratio of gradient estimators at fixed parameters.

For each estimator, M independent gradient draws Delta_1..M are taken at the same
parameters and the same minibatch; each draw is the gradient of the bound *summed* over
the minibatch, as in Rainforth et al. (2018), "Tighter variational bounds are not
necessarily better" (ICML). Per parameter component we report the mean, the variance and

    SNR = |E[Delta]| / std[Delta]

(invariant to summing or averaging over the batch), summarised separately over the decoder
(theta) and encoder (phi) parameters, each summary naming its aggregation: ``snr_mean``
(mean over components) and ``snr_median`` (median over components); components with zero
variance (deterministic) are left out of both.

The Monte Carlo floor. A component whose true mean is zero still shows an SNR estimate of
|N(0, 1/M)| on average, E = sqrt(2 / (pi M)) (``snr_floor``): estimates near it say nothing
about the true SNR. ``frac_at_floor`` is the fraction of components whose SNR estimate is
below FLOOR_MULTIPLE x the floor, i.e. whose mean is within ~2.4 standard errors of zero.

Where: at each training snapshot (``at="snapshots"``), or (``at="optimum"``) at the exact
optimum of a tractable model (``set_to_optimum``: maximum likelihood for theta, the exact
posterior for q) plus independent N(0, noise^2) noise on every parameter component, the
protocol of Rainforth et al.'s Gaussian experiment, where their theory speaks: the decoder
SNR grows as O(sqrt(K)) and the IWAE encoder's shrinks as O(1/sqrt(K)).

Where an exact gradient g exists (:mod:`lvmbench.exact`), bias = ||E[Delta] - g||,
``relative_bias`` = bias / ||g||, ``bias_noise`` = sqrt(sum_j var_j / M) (the size bias
would have from Monte Carlo error alone, for an unbiased estimator) and
MSE = E||Delta - g||^2 / P = (bias^2 + sum_j var_j) / P are reported too
(``bias_reference`` = ``exact``). Where none exists, an estimator declared biased (``biased``
gives its condition, e.g. STL with K > 1 samples per group) is compared with the unbiased
``reparam`` measured alongside on the same random numbers: g is then reparam's mean
(``bias_reference`` = ``reparam``) and ``bias_noise`` adds reparam's Monte Carlo error.

Draws are batched: the minibatch is repeated r times along the batch (r the largest divisor
of M with r x B x K <= max_samples that leaves at least min(M, MIN_GROUPS) groups), so one
backward pass returns the mean of r independent draws; the per-draw variance is r times the
variance of these group means (unbiased), with M / r - 1 degrees of freedom.

Random streams (lvmbench.rng, from the gradvar seed, sub-stream number the cell's seed, so
the seeds of an experiment are independent replicates even at the optimum, where the
trained parameters play no part): ``gradients_batch`` chooses the minibatch,
``gradients_binarization`` binarizes it, ``gradients_point`` draws the noise at the optimum,
``gradients`` the gradient draws (the same for every estimator: common random numbers).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lvmbench.errors import LvmbenchError
from lvmbench.estimators import bias_reason, gradients, make_estimator
from lvmbench.exact import exact_gradients
from lvmbench.grid import valid_estimators, why_invalid_for
from lvmbench.io import save_csv
from lvmbench.models.base import LatentVariableModel, fast_distributions
from lvmbench.objectives import Objective, make_objective
from lvmbench.progress import track
from lvmbench.rng import forked_rng, stream, stream_seed
from lvmbench.runs import RunDir, Trained, holds_run, load_trained
from lvmbench.settings import GradvarSettings
from lvmbench.stats import FLOOR_MULTIPLE, snr_floor

#: the least number of groups the draws are batched into (the variance's degrees of freedom + 1)
MIN_GROUPS = 100


def draws_per_pass(draws: int, samples_per_draw: int, max_samples: int) -> int:
    """r: the largest divisor of ``draws`` with r x samples_per_draw <= max_samples (at least 1)
    leaving at least min(draws, MIN_GROUPS) groups of r draws."""
    groups = min(draws, MIN_GROUPS)
    return max(r for r in range(1, draws + 1)
               if draws % r == 0 and (r == 1 or (r * samples_per_draw <= max_samples and draws // r >= groups)))


class Welford:
    """Running per-component mean and variance of flat vectors (Welford's algorithm)."""

    def __init__(self, size: int, device: torch.device):
        self.n = 0
        self.mean = torch.zeros(size, dtype=torch.float64, device=device)
        self.m2 = torch.zeros_like(self.mean)

    def update(self, g: Tensor) -> None:
        self.n += 1
        delta = g - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (g - self.mean)

    @property
    def var(self) -> Tensor:
        return self.m2 / max(self.n - 1, 1)


def _flat(grads: list[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads]).double() if grads else torch.zeros(0, dtype=torch.float64)


def _summary(mean: Tensor, var: Tensor, draws: int, exact: Tensor | None, exact_var: Tensor | None = None) -> dict:
    """One row of statistics of a parameter group from the per-draw mean and variance; bias
    against ``exact`` (an estimate with per-draw variance ``exact_var``, if not exact)."""
    std = var.sqrt().cpu().numpy()
    m = mean.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(std > 0, np.abs(m) / std, np.nan)
    finite = np.isfinite(snr)
    floor = snr_floor(draws)
    row = {"n_params": int(m.size), "snr_mean": float(np.mean(snr[finite])) if finite.any() else math.nan,
           "snr_median": float(np.median(snr[finite])) if finite.any() else math.nan, "snr_floor": floor,
           "frac_at_floor": float(np.mean(snr[finite] < FLOOR_MULTIPLE * floor)) if finite.any() else math.nan,
           "var_mean": float(var.mean()), "grad_norm": float(np.linalg.norm(m)),
           "bias": math.nan, "relative_bias": math.nan, "bias_noise": math.nan, "mse": math.nan,
           "bias_reference": None}
    if exact is not None:
        bias = float((mean - exact).norm())
        norm = float(exact.norm())
        noise = var.sum() + (0 if exact_var is None else exact_var.sum())
        row.update(bias=bias, relative_bias=bias / norm if norm > 0 else math.nan,
                   bias_noise=float((noise / draws).sqrt()), bias_reference="exact" if exact_var is None else "reparam",
                   mse=(bias ** 2 + float(var.sum())) / max(m.size, 1) if exact_var is None else math.nan)
    return row


def gradient_variance(model: LatentVariableModel, objective: Objective, model_name: str, x: Tensor, K: int,
                      estimators: list[str], draws: int = 100, seed: int = 0, progress: bool = True,
                      trained: dict[str, tuple[dict, dict | None]] | None = None,
                      max_samples: int = 200_000, index: tuple[int, ...] = ()) -> pd.DataFrame:
    """One row per (estimator, parameter group): SNR and its floor, variance, and
    bias/MSE where exact, for the gradient of the bound summed over the minibatch ``x``.

    Estimators that cannot run on this model/objective/K are left out with their reason
    in the ``skipped`` column of a row of NaNs. Estimators run in ``eval()`` mode (the
    statistics of stateful ones frozen); ``trained`` maps an estimator's name to the
    (options, trained state) it was trained with, which it then uses. The draws come from
    the global RNG seeded with the ``gradients`` stream of ``seed`` (sub-stream ``index``) for
    each estimator, on a fork of the caller's; they are batched (module docstring).
    """
    theta, phi = model.decoder_parameters(), model.encoder_parameters()
    B = x.shape[0]
    exact = exact_gradients(model, objective, x, K)
    exact_flat = (B * _flat(exact[0]), B * _flat(exact[1])) if exact is not None else (None, None)
    reps = draws_per_pass(draws, B * K, max_samples)
    xr = x.repeat(reps, *[1] * (x.dim() - 1))  # reps independent copies of the minibatch
    rows, moments = [], {}
    with forked_rng(x.device):  # seeded per estimator below; the caller's RNG is left as it was
        for name in sorted(estimators, key=lambda e: e != "reparam"):  # reparam first: the reference of biased ones
            reason = why_invalid_for(model_name, model, objective, K, name)
            base = {"estimator": name, "objective": objective.name, "K": K, "draws": draws,
                    "biased": bias_reason(name, objective, K) if reason is None else None, "skipped": reason}
            if reason is not None:
                rows += [{**base, "group": g} for g in ("decoder", "encoder")]
                continue
            options, state = (trained or {}).get(name, ({}, None))
            estimator = make_estimator(name, x.shape[-1], **options)
            if state is not None:
                estimator.load_state_dict(state)
            estimator.to(x.device).eval()
            accs = [Welford(sum(p.numel() for p in ps), x.device) for ps in (theta, phi)]
            torch.manual_seed(stream_seed(seed, "gradients", *index))
            for _ in track(range(draws // reps), draws // reps, f"gradvar {name}", "batch of draws", progress):
                with fast_distributions():
                    parts = estimator(model, objective, xr, K)
                for acc, g in zip(accs, map(_flat, gradients(parts, theta, phi))):
                    acc.update(B * g)  # the mean of reps draws of the batch-sum gradient
            moments[name] = [(acc.mean, reps * acc.var) for acc in accs]
            reference = moments.get("reparam") if exact is None and base["biased"] and name != "reparam" else None
            for i, (group, ex) in enumerate(zip(("decoder", "encoder"), exact_flat)):
                ref_mean, ref_var = reference[i] if reference else (ex, None)
                rows.append({**base, "group": group, **_summary(*moments[name][i], draws, ref_mean, ref_var)})
    order = {name: i for i, name in enumerate(estimators)}
    return pd.DataFrame(rows).sort_values("estimator", key=lambda c: c.map(order), kind="stable", ignore_index=True)


@torch.no_grad()
def move_to_optimum(model: LatentVariableModel, x_train: Tensor, noise: float, seed: int,
                    index: tuple[int, ...] = ()) -> None:
    """The model's exact optimum on ``x_train`` (``set_to_optimum``) plus N(0, noise^2) on every
    trainable parameter component, drawn on the CPU from the ``gradients_point`` stream of
    ``seed`` (sub-stream ``index``)."""
    if not hasattr(model, "set_to_optimum"):
        raise LvmbenchError(f"gradvar at the optimum needs a model with a closed-form optimum (linear_gaussian); "
                            f"{type(model).__name__} has none")
    try:
        model.set_to_optimum(x_train)
    except (NotImplementedError, ValueError) as err:
        raise LvmbenchError(f"gradvar at the optimum: {err}") from None
    gen = stream(seed, "gradients_point", index=index)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))


def _measure(trained: Trained, s: GradvarSettings, progress: bool) -> pd.DataFrame:
    """gradient_variance for one loaded model on the settings' minibatch, with the run's columns."""
    cell, data, model, estimator_state, step = trained
    objective = make_objective(cell.objective_name, **cell.objective_options)
    names = list(s.estimators) or valid_estimators(cell.model_name, model, objective, cell.K)
    dev = next(model.parameters()).device
    index = (cell.seed,)
    chosen = torch.randperm(data.train.shape[0], generator=stream(s.seed, "gradients_batch", index=index))
    x = data.observe(data.train[chosen[: s.batch_size]], stream(s.seed, "gradients_binarization", index=index))
    df = gradient_variance(model, objective, cell.model_name, x.to(dev), cell.K, names, s.draws, seed=s.seed,
                           progress=progress, trained={cell.estimator_name: (cell.estimator_options, estimator_state)},
                           max_samples=s.max_samples, index=index)
    return df.assign(step=step, at=s.at, noise=s.noise if s.at == "optimum" else math.nan, cell=cell.id,
                     experiment=cell.experiment, dataset=cell.dataset, model=cell.model,
                     trained_objective=cell.objective, trained_estimator=cell.estimator, seed=cell.seed,
                     gradvar_batch_size=s.batch_size, gradvar_seed=s.seed)


@holds_run("gradvar")
def gradvar_run(run: str | Path, settings: GradvarSettings = GradvarSettings(),
                device: torch.device | str | None = None, data_dir: str | None = None,
                out: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Gradient variance of a trained run on a minibatch of ``settings.batch_size`` training
    points chosen at random (stream ``gradients_batch``): at every snapshot, or once at the
    exact optimum plus noise (``at="optimum"``, step -1). Writes ``gradvar.csv`` (or ``out``),
    whose ``draws``, ``at``, ``noise``, ``gradvar_batch_size`` and ``gradvar_seed`` columns
    record the settings."""
    rd, s = RunDir(run), settings
    if rd.divergence():  # a diverged run is not measured: an empty table, with its columns
        table = pd.DataFrame(columns=["estimator", "objective", "K", "draws", "biased", "skipped", "group", "step",
                                      "cell"])
    elif s.at == "optimum":
        trained = load_trained(run, device=device, data_dir=data_dir)
        move_to_optimum(trained.model, trained.data.train.to(next(trained.model.parameters()).device), s.noise,
                        s.seed, index=(trained.cell.seed,))
        table = _measure(trained._replace(step=-1), s, progress)
    else:
        snapshots = rd.snapshots()
        if not snapshots:
            raise LvmbenchError(f"no snapshots in {rd.snapshot_dir}; train the cell first")
        table = pd.concat([_measure(load_trained(run, snap, device=device, data_dir=data_dir), s, progress)
                           for snap in snapshots], ignore_index=True)
    save_csv(table, out or rd.file("gradvar.csv"))
    return table
