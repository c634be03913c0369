"""Independent random streams (lvmbench.rng) and their use by the measurements.

Seeding a torch.Generator and the global RNG with the same value makes them one stream:
the binarization noise of the test images was the sampling noise of their bound. Each
purpose now has its own stream spawned from the seed by numpy's SeedSequence; these tests
check that the streams differ, are uncorrelated, are deterministic, and that evaluation,
gradvar and amortization draw each purpose from its own.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import lvmbench.measure.evaluation as evaluation
import lvmbench.measure.gradvar as gradvar
from lvmbench.models import build_model
from lvmbench.objectives import make_objective
from lvmbench.rng import PURPOSES, stream, stream_seed

N = 20_000


def test_streams_differ_and_are_deterministic():
    seeds = {(seed, p): stream_seed(seed, p) for seed in (0, 1, 12345) for p in PURPOSES}
    assert len(set(seeds.values())) == len(seeds)  # every (seed, purpose) its own stream
    assert all(stream_seed(seed, p) == v for (seed, p), v in seeds.items())  # and the same every time
    assert stream_seed(0, "ais", 0) != stream_seed(0, "ais", 1) != stream_seed(0, "ais")  # sub-streams
    assert all(0 <= v < 2 ** 63 for v in seeds.values())


def test_streams_are_uncorrelated():
    """20000 standard normals from each purpose's stream (seed 0): every pairwise sample
    correlation within 4.5 / sqrt(N) of 0 (its SE is 1/sqrt(N); 4.5 SE leaves a 1e-3 chance
    of a false alarm over the 300 pairs), and so is each stream's lag-1 autocorrelation."""
    draws = {p: torch.randn(N, generator=stream(0, p), dtype=torch.float64).numpy() for p in PURPOSES}
    bound = 4.5 / math.sqrt(N)
    for a, b in itertools.combinations(PURPOSES, 2):
        assert abs(np.corrcoef(draws[a], draws[b])[0, 1]) < bound, (a, b)
    for p, d in draws.items():
        assert abs(np.corrcoef(d[:-1], d[1:])[0, 1]) < bound, p


def test_evaluation_binarizes_and_samples_from_different_streams(monkeypatch):
    """estimate_bounds binarizes with the evaluation_binarization stream and samples with the
    evaluation stream; before, both were seeded with the eval seed itself."""
    torch.manual_seed(0)
    model = build_model("vae", 12, hidden=[[8, 8]], latent=[2])
    x = torch.rand(6, 12)
    seen = {}

    def observe(xb, generator):
        seen["binarization"] = generator.initial_seed()
        return torch.bernoulli(xb, generator=generator)

    real = evaluation.log_weights

    def spy(*args, **kwargs):
        seen.setdefault("sampling", torch.initial_seed())
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "log_weights", spy)
    first = evaluation.estimate_bounds(model, x, 20, [1, 20], batch_size=6, observe=observe, seed=7, progress=False)
    assert seen == {"binarization": stream_seed(7, "evaluation_binarization"), "sampling": stream_seed(7, "evaluation")}
    again = evaluation.estimate_bounds(model, x, 20, [1, 20], batch_size=6, observe=observe, seed=7, progress=False)
    assert np.array_equal(first.bounds, again.bounds)  # deterministic


def test_gradient_draws_come_from_the_gradients_stream(monkeypatch):
    """gradient_variance seeds its draws with the gradients stream (the minibatch's choice,
    binarization and the noise at the optimum have theirs: gradients_batch,
    gradients_binarization, gradients_point), and is deterministic."""
    torch.manual_seed(0)
    model = build_model("linear_gaussian", 3)
    x = torch.randn(4, 3)
    seeds = []
    real = gradvar.gradients

    def spy(parts, theta, phi):
        seeds.append(torch.initial_seed())
        return real(parts, theta, phi)

    monkeypatch.setattr(gradvar, "gradients", spy)
    run = [gradvar.gradient_variance(model, make_objective("iwae"), "linear_gaussian", x, 2, ["reparam"], draws=4,
                                     seed=5, progress=False) for _ in range(2)]
    assert set(seeds) == {stream_seed(5, "gradients")}
    assert run[0].snr_mean.equals(run[1].snr_mean)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_counter_noise_stays_inside_the_open_unit_interval(dtype):
    """The extreme words a member's noise can draw (all bits 0, all bits 1) give uniforms
    strictly inside (0, 1) in the dtype asked for, so Gumbel numbers stay finite: in float32,
    1 - 2^-54 used to round to 1.0 (-log(-log 1) = inf), and a Gumbel-softmax run diverged."""
    from lvmbench import noise

    for word in (0, -1):
        source = noise.Noise(noise.key_of(0), 0)
        source.bits = lambda shape, device, w=word: torch.full(shape, w, dtype=torch.int64)
        u = source.uniform((4,), dtype)
        assert ((u > 0) & (u < 1)).all(), (word, u)
        assert torch.isfinite(source.gumbel((4,), dtype)).all()
        assert torch.isfinite(source.normal((4,), dtype)).all()
        assert torch.isfinite(-torch.log(-torch.log(u))).all()
