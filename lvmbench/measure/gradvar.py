"""Gradient variance and signal-to-noise ratio of gradient estimators at fixed parameters.

For each estimator, M independent gradient draws Delta_1..M are taken at the same
parameters and the same minibatch. Per parameter component we report the mean, the
variance and Rainforth et al.'s (2018) SNR = |E[Delta]| / std[Delta]; these are
summarised separately over the decoder (theta) and encoder (phi) parameters. Where an
exact gradient exists (:mod:`lvmbench.exact`), bias = ||E[Delta] - grad|| and
MSE = E||Delta - grad||^2 / P are reported too.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lvmbench.errors import LvmbenchError
from lvmbench.estimators import bias_reason, gradients, make_estimator
from lvmbench.exact import exact_gradients
from lvmbench.grid import valid_estimators, why_invalid_for
from lvmbench.io import save_csv
from lvmbench.models.base import LatentVariableModel, fast_distributions
from lvmbench.objectives import Objective, make_objective
from lvmbench.rng import forked_rng
from lvmbench.runs import RunDir, holds_run, load_trained
from lvmbench.settings import GradvarSettings


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


def _summary(acc: Welford, sq_err: Tensor | None, exact: Tensor | None) -> dict:
    mean, std = acc.mean.cpu().numpy(), acc.var.sqrt().cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(std > 0, np.abs(mean) / std, np.nan)
    row = {"n_params": int(mean.size), "snr_mean": float(np.nanmean(snr)) if np.isfinite(snr).any() else math.nan,
           "snr_median": float(np.nanmedian(snr)) if np.isfinite(snr).any() else math.nan,
           "var_mean": float(acc.var.mean()), "grad_norm": float(np.linalg.norm(mean)),
           "bias": math.nan, "mse": math.nan}
    if exact is not None:
        row["bias"] = float((acc.mean - exact).norm())
        row["mse"] = float(sq_err.sum() / acc.n / max(mean.size, 1))
    return row


def gradient_variance(model: LatentVariableModel, objective: Objective, model_name: str, x: Tensor, K: int,
                      estimators: list[str], draws: int = 100, seed: int = 0, progress: bool = True,
                      trained: dict[str, tuple[dict, dict | None]] | None = None) -> pd.DataFrame:
    """One row per (estimator, parameter group): SNR, variance, and bias/MSE where exact.

    Estimators that cannot run on this model/objective/K are left out with their reason
    in the ``skipped`` column of a row of NaNs. Estimators run in ``eval()`` mode (the
    statistics of stateful ones frozen); ``trained`` maps an estimator's name to the
    (options, trained state) it was trained with, which it then uses. The draws come from
    the global RNG, seeded with ``seed`` for each estimator on a fork of the caller's.
    """
    theta, phi = model.decoder_parameters(), model.encoder_parameters()
    exact = exact_gradients(model, objective, x, K)
    exact_flat = (_flat(exact[0]), _flat(exact[1])) if exact is not None else (None, None)
    rows = []
    with forked_rng(x.device):  # seeded per estimator below; the caller's RNG is left as it was
        for name in estimators:
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
            sq_err = [torch.zeros_like(a.mean) for a in accs]
            torch.manual_seed(seed)
            for _ in tqdm(range(draws), desc=f"gradvar {name}", disable=not progress, leave=False):
                with fast_distributions():
                    parts = estimator(model, objective, x, K)
                for i, g in enumerate(map(_flat, gradients(parts, theta, phi))):
                    accs[i].update(g)
                    if exact_flat[i] is not None:
                        sq_err[i] += (g - exact_flat[i]) ** 2
            for group, acc, err, ex in zip(("decoder", "encoder"), accs, sq_err, exact_flat):
                rows.append({**base, "group": group, **_summary(acc, err, ex)})
    return pd.DataFrame(rows)


@holds_run("gradvar")
def gradvar_run(run: str | Path, settings: GradvarSettings = GradvarSettings(),
                device: torch.device | str | None = None, data_dir: str | None = None,
                out: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Gradient variance at every snapshot of a trained run, on a fixed minibatch of the first
    ``settings.batch_size`` training points; writes ``gradvar.csv`` (or ``out``), whose
    ``draws``, ``gradvar_batch_size`` and ``gradvar_seed`` columns record the settings."""
    rd, s = RunDir(run), settings
    if rd.divergence():  # a diverged run is not measured: an empty table, with its columns
        table = pd.DataFrame(columns=["estimator", "objective", "K", "draws", "biased", "skipped", "group", "step",
                                      "cell"])
        save_csv(table, out or rd.file("gradvar.csv"))
        return table
    snapshots = rd.snapshots()
    if not snapshots:
        raise LvmbenchError(f"no snapshots in {rd.snapshot_dir}; train the cell first")
    frames = []
    for snap in snapshots:
        cell, data, model, estimator_state, step = load_trained(run, snap, device=device, data_dir=data_dir)
        objective = make_objective(cell.objective_name, **cell.objective_options)
        names = list(s.estimators) or valid_estimators(cell.model_name, model, objective, cell.K)
        dev = next(model.parameters()).device
        x = data.observe(data.train[: s.batch_size].to(dev), torch.Generator(device=dev).manual_seed(s.seed))
        df = gradient_variance(model, objective, cell.model_name, x, cell.K, names, s.draws, seed=s.seed,
                               progress=progress,
                               trained={cell.estimator_name: (cell.estimator_options, estimator_state)})
        frames.append(df.assign(step=step, cell=cell.id, experiment=cell.experiment, dataset=cell.dataset,
                                model=cell.model, trained_objective=cell.objective,
                                trained_estimator=cell.estimator, seed=cell.seed,
                                gradvar_batch_size=s.batch_size, gradvar_seed=s.seed))
    table = pd.concat(frames, ignore_index=True)
    save_csv(table, out or rd.file("gradvar.csv"))
    return table
