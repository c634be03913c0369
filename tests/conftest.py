"""Shared fixtures: float64 arithmetic, small tractable models, and Monte Carlo gradient
statistics for the unbiasedness tests."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch


def pytest_configure(config):
    """One torch thread for the whole suite, subprocesses included: the tests run many tiny
    operations, for which thread hand-offs cost more than they save (up to 10x slower on a
    busy 2-core machine such as CI's)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture
def float64():
    """Run the test in float64 (exactness checks need it); restore the default after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: these tests run thousands of tiny ops, where
    thread hand-offs cost more than they save (10x slower on a busy 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------
# tractable models in a generic (not optimal, not symmetric) state
# ---------------------------------------------------------------------------------------
def _perturb(params, scale: float) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn_like(p))


def linear_gaussian_setup(x_dim: int = 2, z_dim: int = 1, B: int = 3, seed: int = 0,
                          encoder_noise: float = 0.3):
    """A learned linear decoder (theta = mu, W, c, log sigma) and a learned Gaussian
    encoder (phi = A, b, scale) perturbed away from the exact posterior; x drawn from
    the model. Returns (model, x)."""
    from lvmbench.models import build_model

    torch.manual_seed(seed)
    model = build_model("linear_gaussian", x_dim, z_dim=z_dim, decoder="linear", q_scale=None)
    with torch.no_grad():
        model.mu.copy_(0.5 * torch.randn(z_dim))
        model.c.copy_(0.5 * torch.randn(x_dim))
        model.log_sigma.fill_(-0.3)
    model.set_encoder_to_posterior()
    _perturb(model.encoder_parameters(), encoder_noise)
    _, x = model.sample(B)
    return model, x


def sbn_setup(x_dim: int = 4, B: int = 3, seed: int = 0):
    """A tiny two-layer sigmoid belief net (2 + 2 binary units, 16 states: enumerable),
    weights perturbed off Glorot init, x drawn from the model."""
    from lvmbench.models import build_model

    torch.manual_seed(seed)
    model = build_model("sbn", x_dim, latent=[2, 2], hidden=[3])
    _perturb(model.parameters(), 0.5)
    _, x = model.sample(B)
    return model, x


def catvae_setup(x_dim: int = 4, B: int = 3, seed: int = 0):
    """A tiny categorical VAE (2 variables of 3 classes, 9 states: enumerable)."""
    from lvmbench.models import build_model

    torch.manual_seed(seed)
    model = build_model("catvae", x_dim, variables=2, classes=3, hidden=[4])
    _perturb(model.parameters(), 0.5)
    _, x = model.sample(B)
    return model, x


def gmm_setup(x_dim: int = 2, components: int = 3, B: int = 3, seed: int = 0):
    """A 3-component GMM with a learned prior and a small categorical encoder (one
    hidden layer of 4 ReLUs, so phi has few components), x drawn from the model."""
    from lvmbench.models import build_model

    torch.manual_seed(seed)
    model = build_model("gmm", x_dim, components=components, learn_prior=True, hidden=(4,))
    with torch.no_grad():
        model.loc.mul_(1.5)
        model.prior_logits.copy_(0.5 * torch.randn(components))
    _perturb([model.scale_raw], 0.2)
    # positive hidden biases keep the ReLUs alive on the data, so every phi matters
    with torch.no_grad():
        model.encoder_net[0].bias.copy_(0.5 + 0.1 * torch.randn(4))
    _perturb(model.encoder_parameters(), 0.3)
    _, x = model.sample(B)
    return model, x


# ---------------------------------------------------------------------------------------
# Monte Carlo gradient statistics
# ---------------------------------------------------------------------------------------
class GradStats(NamedTuple):
    """Per parameter component (theta then phi, flattened): the mean over all draws of
    the estimator's minibatch gradient, its standard error, and the number of draws."""

    mean: torch.Tensor
    se: torch.Tensor
    draws: int
    names: list[str]


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def component_names(model) -> list[str]:
    """'theta:mu[0]', 'phi:A[1]', ... in the order of :func:`flat` over theta then phi."""
    names = []
    ids = {id(p): n for n, p in model.named_parameters()}
    for group, params in (("theta", model.decoder_parameters()), ("phi", model.encoder_parameters())):
        for p in params:
            names += [f"{group}:{ids[id(p)]}[{i}]" for i in range(p.numel())]
    return names


def mc_gradient_stats(model, estimator, objective, x: torch.Tensor, K: int,
                      groups: int = 50, reps: int = 80, seed: int = 0) -> GradStats:
    """``groups * reps`` independent gradient draws, batched: the minibatch is repeated
    ``reps`` times along the batch dimension, so one backward pass returns the average
    of ``reps`` independent minibatch-gradient draws (the surrogates are means over
    the batch). The ``groups`` such averages are iid, so their sample standard deviation
    over sqrt(groups) is a valid standard error of the overall mean (groups - 1 degrees
    of freedom). ``estimator`` is a registered name or an Estimator; it runs in ``eval()``
    mode (NVIL's statistics frozen, its baseline fixed)."""
    from lvmbench.estimators import gradients, make_estimator

    torch.manual_seed(seed)
    fn = (make_estimator(estimator, x.shape[1]) if isinstance(estimator, str) else estimator).eval()
    theta, phi = model.decoder_parameters(), model.encoder_parameters()
    xr = x.repeat(reps, 1)
    rows = []
    for _ in range(groups):
        g_theta, g_phi = gradients(fn(model, objective, xr, K), theta, phi)
        rows.append(torch.cat([flat(g_theta), flat(g_phi)]))
    G = torch.stack(rows)
    return GradStats(G.mean(0), G.std(0) / math.sqrt(groups), groups * reps, component_names(model))


def z_scores(stats: GradStats, exact: torch.Tensor, atol: float = 1e-9) -> torch.Tensor:
    """(mean - exact) / se per component; components with se = 0 (deterministic) must
    match to ``atol`` and are reported as 0 or inf."""
    diff = ((stats.mean - exact).abs() - atol).clamp_min(0.0)
    z = diff / stats.se.clamp_min(1e-300)
    return torch.where(stats.se > 0, z, torch.where(diff == 0, 0.0, math.inf))


@pytest.fixture
def lab(float64, one_thread) -> SimpleNamespace:
    """The helpers above, in float64 on one thread: ``lab.lg()``, ``lab.gmm()``,
    ``lab.sbn()``, ``lab.catvae()``, ``lab.stats(...)``, ``lab.z_scores(...)``,
    ``lab.flat(...)``, ``lab.names(model)``."""
    return SimpleNamespace(lg=linear_gaussian_setup, gmm=gmm_setup, sbn=sbn_setup, catvae=catvae_setup,
                           stats=mc_gradient_stats, z_scores=z_scores, flat=flat, names=component_names)


class StepCounter:
    """The trainer's ``train_step``, counted, and interrupted (KeyboardInterrupt, as a kill
    would) at a given call: ``run(interrupt_at=N)`` starts counting afresh."""

    def __init__(self, monkeypatch):
        import lvmbench.train as train_module

        self.real, self.calls = train_module.train_step, []
        self._install = lambda step: monkeypatch.setattr(train_module, "train_step", step)

    def run(self, interrupt_at: int | None = None) -> None:
        self.calls.clear()

        def counted(*args):
            self.calls.append(1)
            if len(self.calls) == interrupt_at:
                raise KeyboardInterrupt
            return self.real(*args)

        self._install(counted)


@pytest.fixture
def train_steps(monkeypatch) -> StepCounter:
    return StepCounter(monkeypatch)
