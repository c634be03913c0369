"""Large-K evaluation (lvmbench.measure.evaluation) beyond its numbers, which
tests/test_models.py and tests/test_objectives.py check against exact answers."""

from __future__ import annotations

import torch

import lvmbench.measure.evaluation as evaluation
from lvmbench.models import build_model


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
