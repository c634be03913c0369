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
