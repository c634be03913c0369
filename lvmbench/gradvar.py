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

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lvmbench.estimators import bias_reason, gradients, make_estimator
from lvmbench.exact import exact_gradients
from lvmbench.models.base import LatentVariableModel, fast_distributions
from lvmbench.objectives import Objective
from lvmbench.registry import why_invalid


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
                      estimator_states: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per (estimator, parameter group): SNR, variance, and bias/MSE where exact.

    Estimators that cannot run on this model/objective/K are left out with their reason
    in the ``skipped`` column of a row of NaNs. Stateful estimators run in ``eval()``
    mode (their statistics frozen), with trained state from ``estimator_states`` if given.
    """
    theta, phi = model.decoder_parameters(), model.encoder_parameters()
    exact = exact_gradients(model, objective, x, K)
    exact_flat = (_flat(exact[0]), _flat(exact[1])) if exact is not None else (None, None)
    rows = []
    for name in estimators:
        reason = why_invalid(model_name, objective.name, K, name, objective_options=objective.options())
        base = {"estimator": name, "objective": objective.name, "K": K, "draws": draws,
                "biased": bias_reason(name, objective, K) if reason is None else None, "skipped": reason}
        if reason is not None:
            rows += [{**base, "group": g} for g in ("decoder", "encoder")]
            continue
        estimator = make_estimator(name, x.shape[-1])
        if isinstance(estimator, torch.nn.Module):
            if (estimator_states or {}).get(name) is not None:
                estimator.load_state_dict(estimator_states[name])
            estimator.to(x.device).eval()
        torch.manual_seed(seed)
        accs = [Welford(sum(p.numel() for p in ps), x.device) for ps in (theta, phi)]
        sq_err = [torch.zeros_like(a.mean) for a in accs]
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
