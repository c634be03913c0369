"""Models against independent references: scipy densities, Bayes' rule, Monte Carlo.

Deterministic identities are checked in float64 to ~1e-10. Statistical checks use fixed
seeds and state their tolerance where they make it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from torch.distributions import Independent, Normal, kl_divergence

from lvmbench.models import build_model, log_weights
from lvmbench.objectives import make_objective

pytestmark = pytest.mark.usefixtures("float64")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


# ---------------------------------------------------------------------------------------
# linear-Gaussian
# ---------------------------------------------------------------------------------------
def test_linear_gaussian_log_marginal_matches_scipy(lab):
    """x ~ N(W mu + c, W W^T + sigma^2 I) for the learned linear decoder."""
    model, x = lab.lg(x_dim=4, z_dim=2, B=6)
    W, mu, c, s2 = _np(model.W), _np(model.mu), _np(model.c), math.exp(2 * model.log_sigma.item())
    ref = stats.multivariate_normal(W @ mu + c, W @ W.T + s2 * np.eye(4)).logpdf(_np(x))
    np.testing.assert_allclose(_np(model.log_marginal(x)), ref, rtol=1e-10)


def test_linear_gaussian_identity_is_rainforth_toy():
    """Default model: W = I, c = 0, sigma = 1, so x ~ N(mu, 2I); q has std sqrt(2/3) and
    only mu (theta) and A, b (phi) are learned."""
    torch.manual_seed(0)
    model = build_model("linear_gaussian", 5)
    with torch.no_grad():
        model.mu.copy_(torch.randn(5))
    x = torch.randn(4, 5)
    ref = stats.multivariate_normal(_np(model.mu), 2 * np.eye(5)).logpdf(_np(x))
    np.testing.assert_allclose(_np(model.log_marginal(x)), ref, rtol=1e-10)
    assert [p.shape for p in model.decoder_parameters()] == [(5,)]
    assert [p.shape for p in model.encoder_parameters()] == [(5, 5), (5,)]
    torch.testing.assert_close(model.encoder(x).covariance_matrix[0], torch.eye(5) * 2 / 3)


@pytest.mark.parametrize("options", [{}, {"z_dim": 2, "decoder": "linear", "q_scale": None}])
def test_linear_gaussian_set_to_optimum_zeroes_every_exact_gradient(options):
    """set_to_optimum (gradvar's ``at: optimum``) is a stationary point of the bound on the
    data it is given: the exact ELBO gradients (closed form) of theta and phi, summed over
    300 points, vanish to 1e-8, for the Rainforth toy (identity decoder, fixed q scale) and
    for probabilistic PCA (linear decoder, learned q); there ELBO = exact log p(x) (q is the
    posterior), and perturbing W lowers log p(x) (a maximum, not a saddle)."""
    from lvmbench.exact import exact_gradients

    torch.manual_seed(0)
    model = build_model("linear_gaussian", 4, **options)
    x = torch.randn(300, 4) @ torch.randn(4, 4) + torch.randn(4)
    model.set_to_optimum(x)
    g_theta, g_phi = exact_gradients(model, make_objective("elbo"), x, 1)
    assert max(float(g.abs().max()) for g in [*g_theta, *g_phi]) < 1e-8
    if options:
        torch.testing.assert_close(model.exact_elbo(x), model.log_marginal(x), rtol=0, atol=1e-9)
        best = model.log_marginal(x).sum()
        with torch.no_grad():
            model.W.add_(0.01 * torch.randn_like(model.W))
        assert model.log_marginal(x).sum() < best
        with pytest.raises(ValueError, match="z_dim < x_dim"):
            build_model("linear_gaussian", 3, z_dim=3, decoder="linear", q_scale=None).set_to_optimum(x[:, :3])


def test_linear_gaussian_posterior_is_bayes(lab):
    """log p(z|x) = log p(z) + log p(x|z) - log p(x) at random z, and the encoder set to
    the posterior has the same density."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=5)
    z = 2 * torch.randn(7, 5, 2)
    bayes = model.prior().log_prob(z) + model.likelihood(z).log_prob(x) - model.log_marginal(x)
    torch.testing.assert_close(model.posterior(x).log_prob(z), bayes, rtol=0, atol=1e-10)
    model.set_encoder_to_posterior()
    torch.testing.assert_close(model.encoder(x).log_prob(z), bayes, rtol=0, atol=1e-10)


def test_linear_gaussian_exact_elbo_identity(lab):
    """ELBO = log p(x) - KL(q(z|x) || p(z|x)), both sides in closed form (1e-10)."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=5)
    kl = kl_divergence(model.encoder(x), model.posterior(x))
    torch.testing.assert_close(model.exact_elbo(x), model.log_marginal(x) - kl, rtol=0, atol=1e-10)


def test_linear_gaussian_exact_elbo_matches_monte_carlo(lab):
    """Mean of 20000 log-weights per point within 4 SE of exact_elbo (5 points; a 4-SE
    normal tail is 6e-5 per point)."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=5)
    torch.manual_seed(1)
    with torch.no_grad():
        lw = log_weights(model, x, 20000).log_w  # (K, B)
        exact = model.exact_elbo(x)
    se = lw.std(0) / math.sqrt(lw.shape[0])
    assert ((lw.mean(0) - exact).abs() <= 4 * se).all(), ((lw.mean(0) - exact) / se)


def test_large_k_iwae_converges_to_log_marginal(lab):
    """L_K with K=5000 (encoder mean perturbed from the posterior's) is within 3 SE of
    log p(x).

    d = L_K - log p(x) over 20 independent repetitions x 4 points (80 paired differences);
    SE = sd(d) / sqrt(80). Only q's mean is perturbed, so w / p(x) has finite variance
    (~1.6 here) and L_K's downward bias, about Var(w / p(x)) / (2K) ~ 2e-4, is far below
    the SE (~2e-3); a 3-SE miss then has probability ~0.3% when the code is right.
    """
    model, x = lab.lg(x_dim=3, z_dim=2, B=4, encoder_noise=0.0)
    e = model.encoder_net
    torch.manual_seed(5)
    with torch.no_grad():
        e.A.add_(0.15 * torch.randn_like(e.A))
        e.b.add_(0.15 * torch.randn_like(e.b))
    iwae = make_objective("iwae")
    torch.manual_seed(2)
    with torch.no_grad():
        reps = 20
        lw = log_weights(model, x.repeat(reps, 1), 5000).log_w
        log_px = model.log_marginal(x)
        d = iwae.decoder(lw) - log_px.repeat(reps)
        var_w = (lw - log_px.repeat(reps)).exp().var(0).max()
    se = d.std() / math.sqrt(d.numel())
    assert d.mean().abs() <= 3 * se, (d.mean().item(), se.item())
    assert var_w / (2 * 5000) < 0.2 * se  # the bias is negligible, so 3 SE is the right yardstick
    assert se < 5e-3  # and the check is sharp: an error of 0.015 nats in log p(x) would fail it
    # the bound is far from log p(x) at K=1, so convergence is what is being tested
    assert (log_px - model.exact_elbo(x)).min() > 20 * se


def test_posterior_encoder_makes_every_bound_exact(lab):
    """With q = p(z|x) every log-weight equals log p(x): elbo == iwae == log p(x) for
    every K (and every sample), to float64 rounding."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=4)
    model.set_encoder_to_posterior()
    log_px = model.log_marginal(x)
    torch.manual_seed(3)
    for K in (1, 2, 7, 100):
        lw = log_weights(model, x, K).log_w
        for name, opts in [("elbo", {}), ("iwae", {}), ("ciwae", {}), ("miwae", {"M": 1})]:
            torch.testing.assert_close(make_objective(name, **opts).decoder(lw), log_px, rtol=0, atol=1e-10)


def test_flow_encoder_refuses_closed_forms():
    model = build_model("linear_gaussian", 2, decoder="linear", q_scale=None,
                        flow={"type": "iaf", "layers": 1, "hidden": 8})
    with pytest.raises(NotImplementedError):
        model.exact_elbo(torch.randn(3, 2))
    with pytest.raises(NotImplementedError):
        model.set_encoder_to_posterior()


# ---------------------------------------------------------------------------------------
# Gaussian mixture
# ---------------------------------------------------------------------------------------
def _gmm_scipy(model, x):
    """log pi_k + log N(x; mu_k, Sigma_k) with scipy: (B, C)."""
    pi = _np(model.prior().probs)
    L = _np(model.scale_tril)
    loc = _np(model.loc)
    return np.stack([np.log(pi[k]) + stats.multivariate_normal(loc[k], L[k] @ L[k].T).logpdf(_np(x))
                     for k in range(len(pi))], axis=-1)


def test_gmm_log_marginal_matches_scipy(lab):
    """log p(x) = log sum_k pi_k N(x; mu_k, Sigma_k), full covariances, learned prior."""
    model, _ = lab.gmm(x_dim=3, components=4)
    x = 2 * torch.randn(10, 3)
    ref = logsumexp(_gmm_scipy(model, x), axis=-1)
    np.testing.assert_allclose(_np(model.log_marginal(x)), ref, rtol=1e-10)
    ref_pdf = sum(p * stats.multivariate_normal(m, L @ L.T).pdf(_np(x))
                  for p, m, L in zip(_np(model.prior().probs), _np(model.loc), _np(model.scale_tril)))
    np.testing.assert_allclose(_np(model.log_marginal(x)), np.log(ref_pdf), rtol=1e-10)


def test_gmm_posterior_is_bayes(lab):
    model, _ = lab.gmm(x_dim=3, components=4)
    x = 2 * torch.randn(10, 3)
    joint = _gmm_scipy(model, x)
    ref = np.exp(joint - logsumexp(joint, axis=-1, keepdims=True))
    np.testing.assert_allclose(_np(model.posterior(x).probs), ref, rtol=1e-9, atol=1e-14)


def test_gmm_log_weights_shapes(lab):
    model, x = lab.gmm()
    lw = log_weights(model, x, 5, "encoder", rsample=False)
    assert lw.z.shape == (5, 3) and lw.log_w.shape == (5, 3)
    lw = log_weights(model, x, 5, "prior", rsample=False)
    assert lw.z.shape == (5, 3) and lw.log_w.shape == (5, 3)
    torch.testing.assert_close(lw.log_w, lw.log_px_z)  # prior proposal: w = p(x|z)


# ---------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------
def _small_vae(layers: int):
    torch.manual_seed(0)
    if layers == 1:
        return build_model("vae", 6, layers=1, hidden=[[8, 8]], latent=[3])
    return build_model("vae", 6, layers=2, hidden=[[8, 8], [5, 5]], latent=[4, 3])


def test_vae_two_layer_chain_log_probs_are_sums_of_layers():
    """p(z) = p(z2) p(z1|z2) and q(z|x) = q(z1|x) q(z2|z1), z = cat(z1, z2) in layer order."""
    model = _small_vae(2)
    x = torch.bernoulli(torch.full((5, 6), 0.3))
    q = model.encoder(x)
    z = q.rsample((7,))  # (K, B, 4 + 3)
    assert z.shape == (7, 5, 7)
    z1, z2 = z[..., :4], z[..., 4:]
    enc1, enc2 = model.encoder_net
    torch.testing.assert_close(q.log_prob(z), enc1(x).log_prob(z1) + enc2(z1).log_prob(z2), rtol=0, atol=1e-10)
    top = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    ref = top.log_prob(z2) + model.decoder_latents[0](z2).log_prob(z1)
    torch.testing.assert_close(model.prior().log_prob(z), ref, rtol=0, atol=1e-10)
    # the decoder reads z1 only
    torch.testing.assert_close(model.likelihood(z).log_prob(x), model.likelihood(torch.cat([z1, z2 + 5], -1)).log_prob(x))


def test_vae_chain_sampling_order():
    """Prior samples start at the top layer z2 (stored last); encoder samples at z1."""
    model = _small_vae(2)
    with torch.no_grad():
        model.prior_loc.fill_(100.0)
    z = model.prior().sample((50,))
    assert z.shape == (50, 7)
    assert (z[:, 4:] > 90).all() and (z[:, :4].abs() < 90).all()
    with torch.no_grad():
        model.encoder_net[0].net[-1].bias[:4] = -100.0  # mean of z1
    z = model.encoder(torch.zeros(2, 6)).sample((10,))
    assert (z[..., :4] < -90).all() and (z[..., 4:].abs() < 90).all()


@pytest.mark.parametrize("layers", [1, 2])
def test_vae_log_weights_shapes(layers):
    model = _small_vae(layers)
    x = torch.bernoulli(torch.full((5, 6), 0.3))
    for proposal in ("encoder", "prior"):
        lw = log_weights(model, x, 4, proposal)
        assert lw.log_w.shape == (4, 5) and torch.isfinite(lw.log_w).all()
    assert not model.exact
