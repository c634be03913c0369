"""Large-K evaluation (lvmbench.measure.evaluation) beyond its numbers, which
tests/test_models.py and tests/test_objectives.py check against exact answers."""

from __future__ import annotations

import math

import torch

import lvmbench.measure.evaluation as evaluation
from lvmbench.models import build_model
from lvmbench.models.base import log_weights


def test_evaluation_runs_in_full_fp32_and_restores_the_flags(monkeypatch):
    """The matmul and cuDNN TF32 flags are off while the log-weights are computed and are
    restored to the caller's values afterwards, also when they were on (the flags exist
    on CPU builds too, so this runs everywhere)."""
    torch.manual_seed(0)
    model = build_model("linear_gaussian", 3)
    seen, real = [], evaluation.log_weights

    def spy(*args, **kwargs):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "log_weights", spy)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        evaluation.estimate_bounds(model, torch.randn(4, 3), 20, [1, 20], batch_size=4, progress=False)
        assert seen and set(seen) == {(False, False)}
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_bound_ordering_checks_ais_against_upper_values_only():
    """AIS and L_K_eval are both stochastic lower bounds: an AIS below L_K_eval (a short AIS)
    is no violation, an AIS above exact log p(x) or above the BDMC upper bound is. Values per
    point: L_1 = -3, L_10 = -2, exact = -1 (+-0.1 noise so the paired SEs are finite)."""
    import numpy as np

    rng = np.random.default_rng(0)
    noise = lambda: 0.1 * rng.standard_normal(200)  # noqa: E731
    est = evaluation.PointEstimates([1, 10], np.stack([-3 + noise(), -2 + noise()], 1), np.ones(200), -1 + noise())
    short_ais = -2.5 + noise()
    order = evaluation.bound_ordering(est, ais=short_ais)
    assert order.passed.all() and ("AIS", "exact log p(x)") in set(zip(order.lower, order.upper))
    assert ("L_10", "AIS") not in set(zip(order.lower, order.upper))
    assert set(order.reference) == {"exact"}
    too_high = evaluation.bound_ordering(est, ais=0.0 + noise())
    assert not too_high.set_index(["lower", "upper"]).loc[("AIS", "exact log p(x)"), "passed"]
    without = evaluation.PointEstimates([1, 10], est.bounds, est.ess, None)
    above_upper = evaluation.bound_ordering(without, ais=0.0 + noise(), upper=-1 + noise())
    assert set(above_upper.reference) == {"bdmc_upper"}
    assert not above_upper.set_index(["lower", "upper"]).loc[("AIS", "BDMC upper"), "passed"]
    assert set(evaluation.bound_ordering(without).reference) == {"largest_k"}


def test_passes_of_a_chunk_estimate_the_exact_elbo(lab, monkeypatch):
    """A chunk drawn in many uneven CPU passes (2 samples per point each, and a remainder of
    1) is still K_eval draws per point from each point's own q(z|x): L_1, the mean of 2001
    log-weights per point, is within 4 SE of the closed-form ELBO on each of 5 points (a
    4-SE normal tail is 6e-5 per point), and the whole chunk in one pass gives the same
    numbers when the draws split evenly into whole vectors of torch's normal sampler."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=5)
    monkeypatch.setattr(evaluation, "CPU_PASS_ROWS", 10)  # 10 // 5 points = 2 samples per pass
    assert evaluation.sample_passes(2001, 5, torch.device("cpu")) == [2] * 1000 + [1]
    torch.manual_seed(0)
    est = evaluation.estimate_bounds(model, x, 2001, [1], batch_size=5, progress=False)
    with torch.no_grad():
        torch.manual_seed(1)
        se = log_weights(model, x, 20000).log_w.std(0).numpy() / math.sqrt(2001)
        exact = model.exact_elbo(x).numpy()
    assert (abs(est.bounds[:, 0] - exact) <= 4 * se).all(), (est.bounds[:, 0] - exact) / se
    # 32 samples per pass x 5 points x 2 latents = 320 normals: whole vectors of 16
    monkeypatch.setattr(evaluation, "CPU_PASS_ROWS", 160)
    split = evaluation.estimate_bounds(model, x, 320, [1, 320], batch_size=5, progress=False)
    monkeypatch.setattr(evaluation, "CPU_PASS_ROWS", 10 ** 9)
    whole = evaluation.estimate_bounds(model, x, 320, [1, 320], batch_size=5, progress=False)
    assert evaluation.sample_passes(320, 5, torch.device("cpu")) == [320]
    assert (split.bounds == whole.bounds).all()


def test_cells_are_evaluated_with_the_proposal_they_trained_with(lab):
    """prior_mc cells are evaluated with prior samples (their encoder is never trained), the
    others with the encoder; with the prior as proposal, L_20000 of the 2-latent linear
    Gaussian is within 0.1 nats of the exact log p(x) on each point (its SE is about 0.02
    here, its bias Var(w / p(x)) / 2K about 1e-3)."""
    from lvmbench.settings import Cell
    base = {"experiment": "e", "dataset": "gaussian_toy", "model": "linear_gaussian", "K": 4, "seed": 0}
    assert evaluation.trained_proposal(Cell.from_dict({**base, "objective": "prior_mc", "estimator": "score"})) \
        == "prior"
    assert evaluation.trained_proposal(Cell.from_dict({**base, "objective": "iwae", "estimator": "reparam"})) \
        == "encoder"
    model, x = lab.lg(x_dim=3, z_dim=2, B=5)
    torch.manual_seed(0)
    est = evaluation.estimate_bounds(model, x, 20000, [1, 20000], batch_size=5, progress=False, proposal="prior")
    exact = est.log_px
    assert (abs(est.bounds[:, -1] - exact) <= 0.1).all(), est.bounds[:, -1] - exact
