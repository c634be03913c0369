"""The CUDA path: data resident on the GPU, binarization and sampling there, evaluation in full
fp32. Skipped on machines without CUDA (CI); run on a GPU machine with plain `pytest`."""

from __future__ import annotations

import math

import pytest
import torch

from lvmbench.data import binarize
from lvmbench.measure.evaluation import estimate_bounds
from lvmbench.runs import load_trained
from lvmbench.settings import Cell
from lvmbench.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_binarize_stays_on_the_gpu():
    x = torch.rand(64, 784, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    b = binarize(x, g)
    assert b.device.type == "cuda" and set(b.unique().tolist()) <= {0.0, 1.0}


def test_train_and_evaluate_on_cuda_match_cpu_statistically(tmp_path):
    """The same cell on CUDA and on CPU: both finish, and their test log p(x) agree within
    the sampling noise of short training (a loose 5-nat band: different random streams)."""
    spec = {"experiment": "gpu", "dataset": "mnist5k", "model": "vae", "objective": "iwae", "K": 5,
            "estimator": "reparam", "seed": 0, "model_options": {"hidden": [[64, 64]], "latent": [8]},
            "train": {"steps": 200, "batch_size": 100, "lr": 0.003}}
    results = {}
    for device in ("cuda", "cpu"):
        summary = train(Cell.from_dict(spec), tmp_path / device, progress=False, device=device)
        assert summary["device"].startswith(device)
        _, data, model, _, _ = load_trained(tmp_path / device, device=torch.device(device))
        assert next(model.parameters()).device.type == device
        est = estimate_bounds(model, data.test[:200].to(device), 500, [1, 50, 500], batch_size=200,
                              observe=data.observe, progress=False)
        results[device] = est.bounds[:, -1].mean()
        assert math.isfinite(results[device])
    assert abs(results["cuda"] - results["cpu"]) < 5.0
