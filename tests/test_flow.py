"""The IAF encoder (lvmbench.models.flow): bijectivity, log q by an independent
change-of-variables computation, log_prob on values it did not sample (no reliance on a
cache), training with the pathwise estimators, and the stop-gradient used by STL/DReG."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from lvmbench.errors import LvmbenchError
from lvmbench.estimators import make_estimator
from lvmbench.models import build_model
from lvmbench.models.flow import IAF, MADE, build_flow
from lvmbench.objectives import make_objective
from lvmbench.settings import TrainSettings
from lvmbench.train import Ensemble, train_step

FLOW = {"type": "iaf", "layers": 2, "hidden": 8}


def _flow_and_base(D: int = 3, C: int = 4, B: int = 5, layers: int = 3, hidden=(16, 16), seed: int = 0):
    torch.manual_seed(seed)
    flow = build_flow({"type": "iaf", "layers": layers, "hidden": list(hidden)}, D, C)
    with torch.no_grad():  # a flow far from the identity, so the checks have teeth
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    h = torch.randn(B, C)
    q0 = Independent(Normal(torch.randn(B, D), 0.5 + torch.rand(B, D)), 1)
    return flow, h, q0


def _forward(flow: IAF, h, u):
    for t in flow.transforms(h):
        u = t(u)
    return u


def _flow_params(model):
    return [p for n, p in model.named_parameters() if ".flow." in n or n.startswith("flow.")]


# ---------------------------------------------------------------------------------------
# the transform
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("D,C", [(1, 0), (1, 3), (4, 0), (5, 3)])
def test_inverse_of_forward_is_identity(float64, D, C):
    flow, h, q0 = _flow_and_base(D=D, C=C)
    u = torch.randn(7, 5, D)
    z = _forward(flow, h, u).detach().clone()  # a fresh tensor: no cached pre-image
    x = z
    for t in reversed(flow.transforms(h)):
        x = t.inv(x)
    torch.testing.assert_close(x, u, atol=1e-10, rtol=0)
    for t in flow.transforms(h):  # each layer on its own, and forward(inverse(z)) == z
        torch.testing.assert_close(t.inv(t(u).detach().clone()), u, atol=1e-10, rtol=0)
        torch.testing.assert_close(t(t.inv(z)), z, atol=1e-10, rtol=0)


def test_made_is_autoregressive(float64):
    """dm_i/du_j = ds_i/du_j = 0 unless order[j] < order[i], for both variable orders."""
    torch.manual_seed(0)
    for reverse in (False, True):
        made = MADE(5, [12, 12], context_dim=2, reverse=reverse)
        u, h = torch.randn(5), torch.randn(2)
        J = torch.autograd.functional.jacobian(lambda v: torch.cat(made(v, h)), u)  # (2D, D)
        allowed = (made.order[None, :] < made.order[:, None]).repeat(2, 1)
        assert (J[~allowed] == 0).all()
        assert (J[allowed] != 0).any()


def test_log_prob_matches_change_of_variables(float64):
    """log q(z) = log q0(u) - log|det dF/du| with the Jacobian of the whole flow map F taken
    by autograd, point by point, and z handed to log_prob as a fresh tensor."""
    flow, h, q0 = _flow_and_base(D=3, C=4, B=5)
    q = flow(q0, h)
    u = q0.sample((2,))  # (2, 5, 3)
    for k in range(2):
        for b in range(5):
            F = lambda v: _forward(flow, h[b:b + 1], v[None])[0]  # noqa: E731
            J = torch.autograd.functional.jacobian(F, u[k, b])
            expected = q0.log_prob(u[k])[b] - torch.linalg.slogdet(J)[1]
            z = F(u[k, b]).detach().clone()
            value = z.expand(5, 3).clone()  # the same z for every x; read point b
            torch.testing.assert_close(q.log_prob(value)[b], expected, atol=1e-10, rtol=0)
    # d log q / dz through the D-pass inverse agrees with finite differences
    z = q.sample((2,)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: flow(q0, h).log_prob(v), (z,))


def test_log_prob_needs_no_cache(float64):
    """rsample -> log_prob (cache hit), a fresh copy (inverse), a new distribution object and
    sample() all give the same log q; with sample() the gradient w.r.t. the flow's
    parameters keeps its path through f^-1(z) (a detached cached pre-image would lose it)."""
    flow, h, q0 = _flow_and_base(D=3, C=4, B=5)
    q = flow(q0, h)
    z = q.rsample((4,))
    cached = q.log_prob(z)
    fresh = q.log_prob(z.detach().clone())
    other = flow(q0, h).log_prob(z.detach().clone())
    torch.testing.assert_close(cached, fresh, atol=1e-10, rtol=0)
    torch.testing.assert_close(cached, other, atol=1e-10, rtol=0)

    params = list(flow.parameters())
    q = flow(q0, h)
    s = q.sample((4,))
    g_sample = torch.autograd.grad(q.log_prob(s).sum(), params)
    g_fresh = torch.autograd.grad(flow(q0, h).log_prob(s.clone()).sum(), params)
    for a, b in zip(g_sample, g_fresh):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert any(g.abs().sum() > 0 for g in g_sample)


def test_density_integrates_to_one(float64):
    """A 2-D flow's density on a fine grid sums to 1 (an independent check of log|det|)."""
    flow, h, _ = _flow_and_base(D=2, C=2, B=1, layers=2, hidden=(8,))
    q = flow(Independent(Normal(torch.zeros(1, 2), torch.ones(1, 2)), 1), h)
    g = torch.linspace(-9, 9, 601)
    zz = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2)
    with torch.no_grad():
        mass = q.log_prob(zz).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(float(mass) - 1) < 1e-3


# ---------------------------------------------------------------------------------------
# flow encoders in the models
# ---------------------------------------------------------------------------------------
def tiny_vae(flow=FLOW, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("vae", 12, hidden=[[16, 16]], latent=[3], flow=flow)
    x = torch.bernoulli(torch.full((6, 12), 0.3))
    model.init_from_data(x)
    return model, x


def tiny_lg(flow=FLOW, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("linear_gaussian", 3, z_dim=2, decoder="linear", q_scale=None, flow=flow)
    _, x = model.sample(6)
    return model, x


MODELS = {"vae": tiny_vae, "linear_gaussian": tiny_lg}


@pytest.mark.parametrize("name", MODELS)
def test_flow_parameters_are_phi(name):
    model, x = MODELS[name]()
    flow = _flow_params(model)
    assert flow, "the flow has parameters"
    phi, theta = {id(p) for p in model.encoder_parameters()}, {id(p) for p in model.decoder_parameters()}
    assert all(id(p) in phi and id(p) not in theta for p in flow)
    plain, _ = MODELS[name](flow=None)
    assert not _flow_params(plain)
    assert type(plain.encoder(x)).__name__ in ("Independent", "MultivariateNormal")
    assert type(model.encoder(x)).__name__ == "TransformedDistribution"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("estimator,objective,K", [("reparam", "elbo", 1), ("reparam", "iwae", 4),
                                                   ("stl", "elbo", 2), ("dreg", "iwae", 4), ("score", "iwae", 3)])
def test_flow_encoder_trains(name, estimator, objective, K):
    """A few training steps (the trainer's own, which checks that the bound and every
    gradient are finite): the gradient reaches every flow layer's parameters."""
    model, x = MODELS[name]()
    ens = Ensemble.of([model], [make_estimator(estimator)], make_objective(objective), K, TrainSettings(lr=1e-2), [0])
    for step in range(4):
        assert torch.isfinite(train_step(ens, x[None], step, 1e-2)).all() and ens.alive.all()
        reached = {n.split(".mades.")[1].split(".")[0] for n in ens.groups["phi"]
                   if ".mades." in n and ens.params[n].grad.abs().sum() > 0}
        assert reached == {"0", "1"}, f"gradient reached flow layers {sorted(reached)}"
    assert all(torch.isfinite(p).all() for p in ens.write_back(0, model).parameters())


@pytest.mark.parametrize("name", MODELS)
def test_encoder_log_prob_stopped(name):
    """Stopped phi: no gradient to any encoder (flow included) parameter; z still gets one,
    equal to d log q/dz, and the value equals the plain log q."""
    model, x = MODELS[name]()
    q = model.encoder(x)
    z = q.rsample((3,)).detach().requires_grad_(True)
    stopped = model.encoder_log_prob_stopped(x, z)
    torch.testing.assert_close(stopped, model.encoder(x).log_prob(z.detach().clone()), atol=1e-5, rtol=1e-5)
    phi = model.encoder_parameters()
    grads = torch.autograd.grad(stopped.sum(), [z, *phi], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert all(g is None or (g == 0).all() for g in grads[1:])
    full = torch.autograd.grad(model.encoder(x).log_prob(z).sum(), z)[0]
    torch.testing.assert_close(grads[0], full, atol=1e-5, rtol=1e-5)


def test_flow_refusals():
    from lvmbench.models.vae import VAE

    with pytest.raises(ValueError, match="flow encoder supports 1 stochastic layer"):
        VAE(12, layers=2, hidden=[[8, 8], [4, 4]], latent=[4, 2], flow=FLOW)
    with pytest.raises(LvmbenchError, match="flow encoder supports 1 stochastic layer"):
        build_model("vae", 12, layers=2, flow=FLOW)
    with pytest.raises(LvmbenchError, match="no closed-form inverse"):
        build_model("vae", 12, flow={"type": "planar"})
    with pytest.raises(LvmbenchError, match="unknown key"):
        build_model("linear_gaussian", 3, flow={"type": "iaf", "depth": 2})
    with pytest.raises(LvmbenchError, match="flow.layers"):
        build_model("linear_gaussian", 3, flow={"type": "iaf", "layers": 0})
    model, x = tiny_lg()
    with pytest.raises(NotImplementedError, match="flow encoder"):
        model.exact_elbo(x)
    with pytest.raises(NotImplementedError, match="flow encoder"):
        model.set_encoder_to_posterior()


def test_flow_without_context():
    model, x = tiny_lg(flow={"type": "iaf", "layers": 1, "hidden": 4, "context": False})
    assert all("context" not in n for n, _ in model.named_parameters())
    q = model.encoder(x)
    assert isinstance(q.base_dist, MultivariateNormal)
    z = q.rsample((2,))
    assert torch.isfinite(q.log_prob(z.detach().clone())).all()


def test_flow_cell_trains_saves_and_evaluates(tmp_path):
    """End to end: a flow cell trains with STL, reloads from its checkpoint with the same
    log q, and large-K evaluation (no-grad sampling path) gives finite bounds <= exact log p(x)."""
    from lvmbench.measure.evaluation import estimate_bounds
    from lvmbench.runs import load_trained
    from lvmbench.settings import Cell
    from lvmbench.train import train

    cell = Cell.from_dict({
        "experiment": "flow", "dataset": "gaussian_toy", "model": "lg_iaf", "model_name": "linear_gaussian",
        "objective": "elbo", "objective_name": "elbo", "K": 1, "estimator": "stl", "seed": 0,
        "dataset_options": {"dim": 3, "n_train": 64, "n_test": 16}, "model_options": {"flow": FLOW},
        "train": {"steps": 10, "batch_size": 16, "checkpoint_every": 10, "log_every": 5}})
    summary = train(cell, tmp_path / "run", progress=False, device="cpu")
    assert math.isfinite(summary["final_bound"])
    _, data, model, _, _ = load_trained(tmp_path / "run")
    x = data.test[:8]
    torch.manual_seed(0)
    z = model.encoder(x).sample((2,))
    again = load_trained(tmp_path / "run").model
    torch.testing.assert_close(model.encoder(x).log_prob(z), again.encoder(x).log_prob(z))
    est = estimate_bounds(model, x, K_eval=50, k_grid=[1, 10], progress=False)
    assert est.bounds.shape == (8, 3) and torch.isfinite(torch.as_tensor(est.bounds)).all()
    assert est.bounds[:, -1].mean() <= est.log_px.mean() + 0.05
