"""Objectives as functions of log-weights, their expectations in K, and lvmbench.exact.

Deterministic checks are float64 identities (~1e-10). Expectations come from
lvmbench.exact (closed form, enumeration, Gauss-Hermite quadrature); where those are
compared with Monte Carlo the tolerance is 4 SE, stated per test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import kl_divergence

from lvmbench.estimators import ESTIMATORS, gradients, make_estimator
from lvmbench.exact import exact_gradients, exact_method, expected_bound
from lvmbench.models import build_model, log_weights
from lvmbench.objectives import OBJECTIVES, combine, grouped_iwae, make_objective

pytestmark = pytest.mark.usefixtures("float64")


# ---------------------------------------------------------------------------------------
# the bounds as functions of log w
# ---------------------------------------------------------------------------------------
def test_bounds_by_hand():
    log_w = torch.log(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 8.0], [7.0, 2.0]]))  # K=4, B=2
    w = log_w.exp()
    torch.testing.assert_close(make_objective("elbo").decoder(log_w), log_w.mean(0))
    torch.testing.assert_close(make_objective("iwae").decoder(log_w), w.mean(0).log())
    # miwae: contiguous groups {1,2}, {3,4}
    ref = 0.5 * (w[:2].mean(0).log() + w[2:].mean(0).log())
    torch.testing.assert_close(make_objective("miwae", M=2).decoder(log_w), ref)
    torch.testing.assert_close(make_objective("ciwae", beta=0.25).decoder(log_w),
                               0.25 * log_w.mean(0) + 0.75 * w.mean(0).log())
    piwae = make_objective("piwae", M=2)
    torch.testing.assert_close(piwae.decoder(log_w), w.mean(0).log())
    torch.testing.assert_close(piwae.encoder(log_w), ref)
    assert not piwae.shared(4) and make_objective("ciwae").shared(4)
    torch.testing.assert_close(make_objective("prior_mc").decoder(log_w), w.mean(0).log())


def test_bound_special_cases():
    torch.manual_seed(0)
    log_w = 3 * torch.randn(6, 5)
    elbo, iwae = make_objective("elbo").decoder(log_w), make_objective("iwae").decoder(log_w)
    torch.testing.assert_close(make_objective("miwae", M=6).decoder(log_w), elbo)
    torch.testing.assert_close(make_objective("miwae", M=1).decoder(log_w), iwae)
    torch.testing.assert_close(make_objective("ciwae", beta=1.0).decoder(log_w), elbo)
    torch.testing.assert_close(make_objective("ciwae", beta=0.0).decoder(log_w), iwae)
    assert (elbo <= iwae + 1e-12).all()  # Jensen, per sample set
    torch.testing.assert_close(combine(log_w, [(2, 0.3), (1, 0.7)]),
                               0.3 * grouped_iwae(log_w, 2) + 0.7 * grouped_iwae(log_w, 1))


def test_bounds_are_numerically_stable():
    """log-weights far from 0 (a 784-pixel Bernoulli can give -1e4) stay finite and exact."""
    for shift in (-1e4, 1e4):
        log_w = torch.tensor([[0.0], [math.log(3.0)]]) + shift
        for name, opts in [("iwae", {}), ("miwae", {"M": 1}), ("ciwae", {})]:
            value = make_objective(name, **opts).decoder(log_w)
            assert torch.isfinite(value).all()
        torch.testing.assert_close(make_objective("iwae").decoder(log_w) - shift, torch.tensor([math.log(2.0)]),
                                   rtol=0, atol=1e-9)


def test_objective_validity():
    assert make_objective("miwae", M=4).why_invalid(6) is not None
    assert make_objective("miwae", M=4).why_invalid(8) is None
    assert make_objective("exact").why_invalid(2) is not None
    assert make_objective("prior_mc").proposal == "prior"
    assert {o.name for o in OBJECTIVES} >= {"elbo", "iwae", "miwae", "ciwae", "piwae", "prior_mc", "exact"}


def test_iwae_k1_equals_elbo_same_seed(lab):
    """At K=1, IWAE and ELBO are the same bound: same values and the same gradient
    estimates under the same seed, for every estimator that takes both."""
    model, x = lab.lg(x_dim=2, z_dim=1)
    theta, phi = model.decoder_parameters(), model.encoder_parameters()
    for est in ESTIMATORS:
        if not {"elbo", "iwae"} <= set(est.obj.objectives) or est.obj.needs_model:
            continue
        fn = make_estimator(est.name, x.shape[1]).eval()  # NVIL's running statistics must not move
        out = []
        for name in ("elbo", "iwae"):
            torch.manual_seed(7)
            parts = fn(model, make_objective(name), x, 1)
            out.append((parts.bound, lab.flat(sum(gradients(parts, theta, phi), []))))
        torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=1e-12, msg=est.name)
        torch.testing.assert_close(out[0][1], out[1][1], rtol=0, atol=1e-10, msg=est.name)


# ---------------------------------------------------------------------------------------
# expectations in K
# ---------------------------------------------------------------------------------------
def test_expected_iwae_increases_with_k_quadrature(lab):
    """E[L_K] (Gauss-Hermite, 1-D latent) is non-decreasing in K = 1..4 and below
    log p(x); steps are ~1e-2 here, the quadrature error ~1e-6."""
    model, x = lab.lg(x_dim=2, z_dim=1, B=3)
    iwae = make_objective("iwae")
    with torch.no_grad():
        values = torch.stack([expected_bound(model, iwae, x, K) for K in (1, 2, 3, 4)])
        log_px = model.log_marginal(x)
    assert (values.diff(dim=0) > 1e-4).all(), values
    assert (values < log_px).all()
    torch.testing.assert_close(values[0], model.exact_elbo(x), rtol=0, atol=1e-12)


def test_expected_iwae_increases_with_k_enumeration(lab):
    """E[L_K] by exact enumeration on the GMM (K = 1..8) and a tiny SBN (K = 1..4):
    non-decreasing, below log p(x), and closing the gap (Burda et al. theorem 1)."""
    for model, x, Ks in [(*lab.gmm(), range(1, 9)), (*lab.sbn(), range(1, 5))]:
        iwae = make_objective("iwae")
        with torch.no_grad():
            values = torch.stack([expected_bound(model, iwae, x, K) for K in Ks])
            log_px = model.log_marginal(x)
        assert (values.diff(dim=0) >= -1e-12).all(), values
        assert (values <= log_px + 1e-12).all()
        assert ((log_px - values[-1]) < 0.6 * (log_px - values[0])).all()


def test_expected_k_monotone_paired_monte_carlo(lab):
    """Without an exact method (2-D latent): E[L_{2K}] >= E[L_K] via paired samples
    (L_K = mean of the two halves' bounds is unbiased for E[L_K] from the same draws;
    the paired difference L_2K - (L_K^a + L_K^b)/2 is >= 0 in expectation). Tolerance:
    mean difference > -3 SE over 4000 draws (it is strongly positive here)."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=4)
    torch.manual_seed(4)
    iwae, miwae2 = make_objective("iwae"), make_objective("miwae", M=2)
    with torch.no_grad():
        for K in (1, 2, 4):
            lw = log_weights(model, x.repeat(1000, 1), 2 * K).log_w
            d = iwae.decoder(lw) - miwae2.decoder(lw)  # L_2K - mean of two L_K
            se = d.std() / math.sqrt(d.numel())
            assert d.mean() > 3 * se, (K, d.mean().item(), se.item())


# ---------------------------------------------------------------------------------------
# lvmbench.exact
# ---------------------------------------------------------------------------------------
def test_exact_methods_are_chosen(lab):
    lg1, x1 = lab.lg(x_dim=2, z_dim=1)
    lg2, x2 = lab.lg(x_dim=2, z_dim=2)
    gmm, xg = lab.gmm()
    o = make_objective
    assert exact_method(lg2, o("elbo"), x2, 5) == "closed_form"
    assert exact_method(lg2, o("iwae"), x2, 1) == "closed_form"
    assert exact_method(lg2, o("iwae"), x2, 2) is None
    assert expected_bound(lg2, o("iwae"), x2, 2) is None
    assert exact_method(lg1, o("iwae"), x1, 4) == "quadrature"
    assert exact_method(lg1, o("iwae"), x1, 5) is None
    assert exact_method(lg1, o("ciwae"), x1, 3) == "mixed"
    assert exact_method(lg1, o("prior_mc"), x1, 1) == "quadrature"  # no closed form under the prior
    assert exact_method(lg1, o("exact"), x1, 1) == "exact"
    assert exact_method(gmm, o("iwae"), xg, 11) == "enumeration"  # 3**11 = 177147
    assert exact_method(gmm, o("iwae"), xg, 12) is None
    assert exact_method(gmm, o("miwae", M=2), xg, 12) == "enumeration"  # groups of 6
    assert exact_method(gmm, o("miwae", M=4), xg, 6) is None  # K not a multiple of M
    vae = build_model("vae", 6, hidden=[[8, 8]], latent=[3])
    xv = torch.bernoulli(torch.full((2, 6), 0.5))
    assert expected_bound(vae, o("elbo"), xv, 1) is None and exact_gradients(vae, o("elbo"), xv, 1) is None
    assert expected_bound(vae, o("exact"), xv, 1) is None
    flow = build_model("linear_gaussian", 2, z_dim=1, decoder="linear", q_scale=None,
                       flow={"type": "iaf", "layers": 1, "hidden": 4})
    assert expected_bound(flow, o("elbo"), x1, 1) is None  # q is no longer Gaussian


def test_quadrature_k1_is_exact(lab):
    """log w is quadratic in z for the linear-Gaussian model, so Gauss-Hermite is exact
    at K=1: the grid (decompose=False) equals the closed form, values and gradients."""
    model, x = lab.lg(x_dim=2, z_dim=1)
    elbo = make_objective("elbo")
    closed = expected_bound(model, elbo, x, 1)
    quad = expected_bound(model, elbo, x, 1, decompose=False, nodes=8)
    torch.testing.assert_close(quad, closed, rtol=0, atol=1e-12)
    params = list(model.parameters())
    params = [p for p in params if p.requires_grad]
    g1 = torch.autograd.grad(closed.sum(), params)
    g2 = torch.autograd.grad(quad.sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_enumeration_elbo_is_log_marginal_minus_kl(lab):
    """Enumerated E_q[log w] equals log p(x) - KL(q || p(z|x)) in closed form, values and
    gradients (GMM with a learned prior)."""
    model, x = lab.gmm()
    value = expected_bound(model, make_objective("elbo"), x, 1)
    ref = model.log_marginal(x) - kl_divergence(model.encoder(x), model.posterior(x))
    torch.testing.assert_close(value, ref, rtol=0, atol=1e-12)
    params = [p for p in model.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(value.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name, opts, K", [("miwae", {"M": 2}, 4), ("ciwae", {"beta": 0.3}, 3),
                                          ("piwae", {"M": 2}, 4), ("iwae", {}, 3), ("prior_mc", {}, 3)])
def test_decomposition_matches_joint_grid(lab, name, opts, K):
    """E[f] = sum_i a_i E[L_{K/M_i}] (what expected_bound computes) equals the objective's
    own function averaged over the joint grid of all K samples: enumeration on the GMM
    (exact), quadrature on the same nodes (identical rules, so to rounding)."""
    obj = make_objective(name, **opts)
    gmm, xg = lab.gmm()
    lg, xl = lab.lg(x_dim=2, z_dim=1)
    for part in ("decoder", "encoder"):
        torch.testing.assert_close(expected_bound(gmm, obj, xg, K, part),
                                   expected_bound(gmm, obj, xg, K, part, decompose=False), rtol=0, atol=1e-11)
        torch.testing.assert_close(expected_bound(lg, obj, xl, K, part, nodes=10),
                                   expected_bound(lg, obj, xl, K, part, nodes=10, decompose=False),
                                   rtol=0, atol=1e-11)


@pytest.mark.parametrize("setup, name, opts, K", [
    ("lg", "iwae", {}, 3), ("lg", "prior_mc", {}, 2), ("lg", "miwae", {"M": 2}, 4),
    ("gmm", "iwae", {}, 5), ("gmm", "prior_mc", {}, 4), ("sbn", "ciwae", {}, 3), ("catvae", "iwae", {}, 2),
])
def test_expected_bound_matches_monte_carlo(lab, setup, name, opts, K):
    """expected_bound within 4 SE of the mean of 20000 sampled bounds, per data point
    (3 points; 4 SE is a 6e-5 normal tail each). Quadrature's own error (~1e-6) is far
    below the SE (~1e-2)."""
    model, x = lab.lg(x_dim=2, z_dim=1) if setup == "lg" else getattr(lab, setup)()
    obj = make_objective(name, **opts)
    n = 20000
    torch.manual_seed(8)
    with torch.no_grad():
        exact = expected_bound(model, obj, x, K)
        lw = log_weights(model, x.repeat(n, 1), K, obj.proposal, rsample=False).log_w
        f = obj.decoder(lw).reshape(n, -1)
    se = f.std(0) / math.sqrt(n)
    assert ((f.mean(0) - exact).abs() <= 4 * se).all(), ((f.mean(0) - exact) / se)


def test_exact_objective_parts(lab):
    model, x = lab.gmm()
    obj = make_objective("exact")
    torch.testing.assert_close(expected_bound(model, obj, x, 1), model.log_marginal(x))
    torch.testing.assert_close(expected_bound(model, obj, x, 1, "encoder"),
                               -kl_divergence(model.posterior(x), model.encoder(x)))
    with pytest.raises(ValueError):
        expected_bound(model, obj, x, 1, "both")


def test_exact_gradients_shapes_and_groups(lab):
    """exact_gradients returns one tensor per theta / phi parameter; prior_mc leaves phi
    at exactly zero (the encoder plays no part)."""
    model, x = lab.lg(x_dim=2, z_dim=1)
    g_theta, g_phi = exact_gradients(model, make_objective("prior_mc"), x, 2)
    assert [g.shape for g in g_theta] == [p.shape for p in model.decoder_parameters()]
    assert [g.shape for g in g_phi] == [p.shape for p in model.encoder_parameters()]
    assert all((g == 0).all() for g in g_phi) and any((g != 0).any() for g in g_theta)


@pytest.mark.parametrize("setup, name, K", [("lg", "iwae", 4), ("gmm", "miwae", 6), ("lg", "elbo", 1)])
def test_exact_gradients_are_chunked_over_the_batch(lab, monkeypatch, setup, name, K):
    """Memory stays bounded whatever the batch (K=4 quadrature on 2000 points once ran out
    of memory): with a grid budget of 4 points' worth of rows, every grid expectation
    differentiates at most 4 points, and the summed chunk gradients equal the one-pass
    gradients to float64 rounding (atol 1e-12). Quadrature with 6 nodes keeps it fast."""
    import lvmbench.exact as exact

    model, x = lab.lg(x_dim=2, z_dim=1, B=11) if setup == "lg" else lab.gmm(B=11)
    obj = make_objective(name, **({"M": 2} if name == "miwae" else {}))
    dec = expected_bound(model, obj, x, K, "decoder", nodes=6).mean()
    enc = expected_bound(model, obj, x, K, "encoder", nodes=6).mean()
    whole = (torch.autograd.grad(dec, model.decoder_parameters(), retain_graph=True),
             torch.autograd.grad(enc, model.encoder_parameters()))
    rows = max(exact._grid_rows(model, obj, x, K, part, 6) for part in ("decoder", "encoder"))
    seen, real = [], exact._grid_expectation

    def spy(log_w, log_mass, k, f):
        seen.append(log_w.shape[1])  # points in this grid expectation
        return real(log_w, log_mass, k, f)

    monkeypatch.setattr(exact, "_GRAD_ELEMENTS", 4 * rows)
    monkeypatch.setattr(exact, "_grid_expectation", spy)
    chunked = exact_gradients(model, obj, x, K, nodes=6)
    assert name == "elbo" or (seen and max(seen) <= 4)
    for a, b in zip([*whole[0], *whole[1]], [*chunked[0], *chunked[1]]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_grid_expectation_gathers_bounded_chunks(lab, monkeypatch):
    """Without autograd a grid expectation gathers at most _CHUNK_ELEMENTS log-weights at a
    time (rows x points), and the chunked sum equals one pass (atol 1e-12)."""
    import lvmbench.exact as exact

    model, x = lab.lg(x_dim=2, z_dim=1, B=50)
    obj = make_objective("iwae")
    with torch.no_grad():
        whole = expected_bound(model, obj, x, 3, nodes=8, decompose=False)
        sizes = []
        monkeypatch.setattr(exact, "_CHUNK_ELEMENTS", 1000)
        f = obj.decoder
        monkeypatch.setattr(obj, "decoder", lambda lw: sizes.append(lw.numel() // lw.shape[0]) or f(lw))
        chunked = expected_bound(model, obj, x, 3, nodes=8, decompose=False)
    assert sizes and max(sizes) <= 1000  # 8**3 rows x 50 points, in chunks of 20 rows
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
