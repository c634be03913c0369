"""Signal-to-noise ratios of IWAE gradients on Rainforth et al.'s (2018) linear-Gaussian toy,
measured by the pipeline's own code (lvmbench.measure.gradvar, ``at: optimum``).

Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018), "Tighter variational bounds
are not necessarily better": with K importance samples the decoder gradient's SNR grows
like sqrt(K) and the encoder's (pathwise, IWAE) shrinks like 1/sqrt(K); Tucker et al.'s
(2018) DReG estimator makes the encoder's SNR grow with K instead.

Setting: the ``gaussian_toy`` dataset (x_dim = 20, x ~ N(mu_true, 2I), 1024 training
points) and the default ``linear_gaussian`` model (identity decoder, q std sqrt(2/3)) at its
exact optimum, mu = mean(x), A = I/2, b = mu/2 (``set_to_optimum``), plus N(0, 0.01^2) noise
on every component; a random minibatch of 32 points, gradients of the bound summed over
it. SNR per component = |E[g]| / std[g]; the summary is the mean over the decoder's (mu, 20)
and the encoder's (A, b: 420) components, and slopes are fitted over the K whose SNR is at
least 3x the Monte Carlo floor sqrt(2/(pi M)) (lvmbench.stats.snr_slope).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvmbench.data import load_dataset
from lvmbench.measure.gradvar import gradient_variance, move_to_optimum
from lvmbench.models import build_model
from lvmbench.objectives import make_objective
from lvmbench.rng import stream
from lvmbench.stats import snr_slope


def _toy(cell_seed: int = 0):
    """The model and minibatch the default run's gradvar (seed 0) measures for a cell seed."""
    data = load_dataset("gaussian_toy", None)
    torch.manual_seed(cell_seed)
    model = build_model("linear_gaussian", 20)
    move_to_optimum(model, data.train, noise=0.01, seed=0, index=(cell_seed,))
    order = torch.randperm(data.train.shape[0], generator=stream(0, "gradients_batch", index=(cell_seed,)))
    return model, data.train[order[:32]]


def _snr(model, x, Ks, draws, estimators=("reparam", "dreg"), cell_seed: int = 0):
    frames = [gradient_variance(model, make_objective("iwae"), "linear_gaussian", x, K, list(estimators), draws,
                                seed=0, index=(cell_seed,), progress=False) for K in Ks]
    import pandas as pd

    return pd.concat(frames).set_index(["estimator", "group", "K"]).sort_index()


@pytest.mark.slow
def test_rainforth_snr_slopes(one_thread, capsys):
    """Slopes over K = 4, 16, 64 with 5000 draws per K (the default run's snr experiment):
    decoder within 0.1 of +0.5, IWAE-reparam encoder within 0.1 of -0.5, DReG encoder
    positive. Measured (seeds 0 and 1): decoder +0.48 and +0.47, encoder -0.45 and -0.45
    (K = 64, at 2.6x the floor, is left out), DReG encoder about +0.3. K starts at 4 since
    the rates are asymptotic: the decoder's local slope is 0.38 (seed 0) and 0.31 (seed 1)
    from K = 2 to 4, 0.53 from 16 to 64. The tolerance of 0.1 is the issue's target, about 5
    seed-to-seed standard deviations (~0.01) from the measured values."""
    model, x = _toy(0)
    df = _snr(model, x, (4, 16, 64), 5000)
    slopes = {}
    for est, group in (("reparam", "decoder"), ("reparam", "encoder"), ("dreg", "encoder")):
        d = df.loc[(est, group)]
        slopes[f"{est} {group}"], _ = snr_slope(d.index.to_numpy(), d.snr_mean.to_numpy(), d.snr_floor.to_numpy())
    with capsys.disabled():
        print("\n[Rainforth toy at the optimum + N(0, 0.01^2), iwae] mean SNR over components, 5000 draws per K")
        print(df[["snr_mean", "snr_floor", "frac_at_floor"]].to_string())
        print("    slopes over the K above 3x the floor: " + ", ".join(f"{k} {v:+.3f}" for k, v in slopes.items()))
    assert abs(slopes["reparam decoder"] - 0.5) <= 0.1, slopes
    assert abs(slopes["reparam encoder"] + 0.5) <= 0.1, slopes
    assert slopes["dreg encoder"] > 0, slopes


@pytest.mark.slow
def test_snr_directions_quick(one_thread):
    """K = 1 vs 16, 500 draws: the decoder's SNR rises, the IWAE encoder's falls, DReG's
    encoder's rises. Measured ratios (5000 draws, seed 0): 3.0, 0.29, 1.46; thresholds 1.5,
    0.7 and 1.1 leave room for the 500-draw noise (floor 0.036: the encoder's SNR at K = 16,
    ~0.06, is inflated by it, hence the loose 0.7)."""
    model, x = _toy(0)
    df = _snr(model, x, (1, 16), 500).snr_mean
    ratio = {k: df.loc[k + (16,)] / df.loc[k + (1,)] for k in (("reparam", "decoder"), ("reparam", "encoder"),
                                                               ("dreg", "encoder"))}
    assert ratio[("reparam", "decoder")] > 1.5 and ratio[("reparam", "encoder")] < 0.7, ratio
    assert ratio[("dreg", "encoder")] > 1.1, ratio
    assert np.isfinite(list(ratio.values())).all()


def test_draws_per_pass():
    """r divides the draws, fits max_samples, and leaves at least min(draws, 100) groups."""
    from lvmbench.measure.gradvar import draws_per_pass

    assert draws_per_pass(100, 10, 10 ** 9) == 1  # 100 groups of 1
    assert draws_per_pass(5000, 3200, 200_000) == 50  # 62 would fit; 50 leaves 100 groups
    assert draws_per_pass(5000, 10 ** 6, 200_000) == 1  # one draw does not fit: one at a time
    assert draws_per_pass(1000, 100, 1000) == 10


def test_batched_draws_estimate_the_per_draw_variance(lab):
    """Drawing 2 gradients per backward pass (the minibatch repeated) and scaling the
    variance of the group means by 2 estimates the same per-draw variance as one draw per
    pass: the ratio of the two variance estimates (mean over components) lies in [0.6, 1.6]
    (the central 99% of an F(99, 199) ratio is [0.64, 1.57]), and the mean SNRs agree within
    20% (each has a relative SE of ~5% with 200 draws)."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=8)
    obj = make_objective("iwae")
    one = gradient_variance(model, obj, "linear_gaussian", x, 3, ["reparam"], 200, seed=1, max_samples=1, progress=False)
    two = gradient_variance(model, obj, "linear_gaussian", x, 3, ["reparam"], 200, seed=2, max_samples=2 * 8 * 3,
                            progress=False)
    ratio = two.var_mean / one.var_mean
    assert ((0.6 < ratio) & (ratio < 1.6)).all(), ratio
    assert ((two.snr_mean / one.snr_mean - 1).abs() < 0.2).all(), (two.snr_mean, one.snr_mean)
