"""Discrete-latent models and their estimators (sbn, catvae, vqvae; score_baseline, vimco,
gumbel, straight_through), checked against enumeration on tiny models.

Unbiasedness of score_baseline and vimco against exact gradients lives in
test_estimators.py (it iterates the registry); here: VIMCO's variance against plain
REINFORCE, the relaxed estimators' measured bias and the discrete bound they report,
the VQ-VAE bound against exact enumeration, and the registry listing.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from lvmbench.cli import main
from lvmbench.estimators import bias_reason, gradients, make_estimator
from lvmbench.exact import exact_gradients, expected_bound
from lvmbench.grid import why_invalid
from lvmbench.measure.gradvar import gradient_variance
from lvmbench.models import build_model
from lvmbench.objectives import make_objective


@pytest.mark.parametrize("setup", ["sbn", "catvae"])
def test_vimco_variance_below_score(lab, setup):
    """VIMCO's leave-one-out baselines lower the encoder-gradient variance of plain score-
    function IWAE at the same parameters and minibatch. 400 draws each: the variance
    estimates then have a relative SE of about sqrt(2/400) = 7%, while the expected gap is a
    factor of several, so a ratio below 0.8 is a safe and still meaningful threshold."""
    model, x = getattr(lab, setup)()
    df = gradient_variance(model, make_objective("iwae"), setup, x, 4, ["score", "vimco"], draws=400,
                           progress=False).set_index(["estimator", "group"])
    ratio = df.loc[("vimco", "encoder"), "var_mean"] / df.loc[("score", "encoder"), "var_mean"]
    print(f"{setup}: VIMCO / score encoder variance = {ratio:.3f}")
    assert ratio < 0.8
    # the decoder gradient is the same estimator in both (no score term reaches theta)
    assert df.loc[("vimco", "decoder"), "var_mean"] == pytest.approx(df.loc[("score", "decoder"), "var_mean"])


@pytest.mark.parametrize("estimator", ["gumbel", "straight_through"])
def test_relaxed_estimators_are_biased_and_report_the_discrete_bound(lab, estimator, capsys):
    """The relaxed estimators are declared biased; their bias is measured and must be
    clearly nonzero (some component more than 6 SE from the exact gradient, at temperature
    1), so the test also fails if they silently became an unbiased estimator.

    The bound they report is the discrete model's, at exact samples of q: its mean over
    4000 draws lies within 4 SE of the exact expected bound (enumeration)."""
    model, x = lab.catvae()
    obj = make_objective("elbo")
    assert bias_reason(estimator, obj, 2) is not None
    exact = lab.flat(sum(exact_gradients(model, obj, x, 2), []))
    stats = lab.stats(model, estimator, obj, x, 2, groups=50, reps=80, seed=3)
    z = lab.z_scores(stats, exact)  # se = 0 components (dead units) count only if they differ
    worst = int(z.argmax())
    with capsys.disabled():
        print(f"\n{estimator} bias at tau=1 (catvae 2x3, elbo, K=2): worst {stats.names[worst]} "
              f"bias={float(stats.mean[worst] - exact[worst]):+.4f} +- {float(stats.se[worst]):.4f} "
              f"(exact {float(exact[worst]):+.4f}); |bias| / |grad| = "
              f"{float((stats.mean - exact).norm() / exact.norm()):.3f}")
    assert z.max() > 6

    est = make_estimator(estimator, x.shape[1])
    torch.manual_seed(4)
    xr = x.repeat(4000, 1)
    with torch.no_grad():
        bounds = est(model, obj, xr, 2).bound.reshape(4000, -1)  # (draws, B)
    target = expected_bound(model, obj, x, 2)
    se = bounds.std(0) / math.sqrt(4000)
    assert ((bounds.mean(0) - target).abs() <= 4 * se).all()


def test_gumbel_temperature_anneals(lab):
    """tau = max(min_temperature, temperature * exp(-rate * step)), stepping in training mode only."""
    model, x = lab.catvae()
    est = make_estimator("gumbel", x.shape[1], temperature=2.0, anneal_rate=0.5, min_temperature=0.5)
    obj = make_objective("elbo")
    est.eval()
    est(model, obj, x, 1)
    assert est.tau == 2.0
    est.train()
    for _ in range(2):
        est(model, obj, x, 1)
    assert est.tau == pytest.approx(2.0 * math.exp(-1.0))
    for _ in range(10):
        est(model, obj, x, 1)
    assert est.tau == 0.5


@pytest.fixture
def tiny_vqvae(float64):
    torch.manual_seed(0)
    model = build_model("vqvae", 6, positions=2, codebook=3, dim=2, hidden=[8])
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    return model, x


def test_vqvae_elbo_is_log_joint_and_below_exact(tiny_vqvae):
    """With a uniform code prior the VQ-VAE ELBO equals log p(x|z_q) + log p(z_q) exactly
    (q is one-hot, so it is never above it), and it never exceeds the exact log p(x),
    here enumerated over all 3^2 code configurations."""
    model, x = tiny_vqvae
    est = make_estimator("straight_through", x.shape[1])
    elbo = est(model, make_objective("elbo"), x, 1).bound
    z_q = model.encoder(x).sample()
    log_joint = model.likelihood(z_q).log_prob(x) + model.prior().log_prob(z_q)
    torch.testing.assert_close(elbo, log_joint)
    assert torch.allclose(log_joint, model.likelihood(z_q).log_prob(x) - 2 * math.log(3))
    assert (elbo <= model.log_marginal(x) + 1e-12).all()
    # large-K evaluation of a deterministic encoder is the ELBO itself
    from lvmbench.measure.evaluation import estimate_bounds

    est_k = estimate_bounds(model, x, 10, [1, 10], batch_size=5, progress=False)
    torch.testing.assert_close(torch.as_tensor(est_k.bounds[:, -1]), elbo.detach())


def test_vqvae_losses_reach_the_right_parameters(tiny_vqvae):
    """The codebook learns only from the codebook loss (decoder part), the encoder from the
    straight-through reconstruction term and beta times the commitment loss."""
    model, x = tiny_vqvae
    parts = make_estimator("straight_through", x.shape[1])(model, make_objective("elbo"), x, 1)
    g_theta, g_phi = gradients(parts, model.decoder_parameters(), model.encoder_parameters())
    names = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder_net")]
    codebook = g_theta[names.index("codebook.weight")]
    assert codebook.abs().sum() > 0
    assert all(g.abs().sum() > 0 for g in g_phi)
    # without the codebook loss no gradient reaches the codebook
    z_e = model.z_e(x)
    e = model.codebook(model.quantize(z_e))
    rec = model.decode(z_e + (e - z_e).detach()).log_prob(x).sum()
    (g,) = torch.autograd.grad(rec, model.codebook.weight, allow_unused=True)
    assert g is None or g.abs().sum() == 0


def test_vqvae_sampling_prior_fitted_after_training(tiny_vqvae):
    model, x = tiny_vqvae
    model.after_training(x)
    probs = model.code_logits.exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    z, xs = model.sample(7)
    assert z.shape == (7, 2) and xs.shape == (7, 6)


@pytest.mark.parametrize("model, estimator, K, needle", [
    ("sbn", "reparam", 1, "reparameterizable"),
    ("catvae", "stl", 5, "reparameterizable"),
    ("catvae", "dreg", 5, "reparameterizable"),
    ("sbn", "vimco", 1, "K >= 2"),
    ("vae", "gumbel", 1, "relaxable"),
    ("vae", "straight_through", 1, "relaxable or straight_through"),
    ("vqvae", "score", 1, "deterministic"),
    ("vqvae", "straight_through", 5, "only K=1"),
])
def test_discrete_refusals(model, estimator, K, needle):
    objective = "iwae" if estimator == "vimco" else "elbo"
    reason = why_invalid(model, objective, K, estimator)
    assert reason is not None and needle in reason and "\n" not in reason


def test_list_shows_new_entries(capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    for name in ("sbn", "catvae", "vqvae"):
        assert listing["models"][name]["latent_kind"] == "discrete"
    assert listing["models"]["catvae"]["relaxable"] is True
    assert listing["models"]["vqvae"]["deterministic"] is True
    assert listing["estimators"]["vimco"]["min_K"] == 2
    assert "> 1 sample" in listing["estimators"]["stl"]["bias"]  # the condition, in words
    assert "4096" in listing["models"]["sbn"]["exact"]
    assert listing["estimators"]["gumbel"]["options"]["temperature"] == 1.0
    assert listing["estimators"]["straight_through"]["needs_model"] == ["relaxable", "straight_through"]
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in ("score_baseline", "vimco", "gumbel", "straight_through", "sbn", "catvae", "vqvae"):
        assert name in text


@pytest.mark.parametrize("model, options, estimator, est_options, K", [
    ("sbn", {"latent": [8, 4]}, "vimco", {}, 3),
    ("sbn", {"latent": [8]}, "score_baseline", {"hidden": 16}, 2),
    ("catvae", {"variables": 4, "classes": 3, "hidden": [32]}, "gumbel", {"anneal_rate": 0.01}, 2),
    ("vqvae", {"positions": 4, "codebook": 8, "hidden": [32]}, "straight_through", {}, 1),
])
def test_discrete_cells_train_and_resume(tmp_path, one_thread, train_steps, model, options, estimator,
                                        est_options, K):
    """Each discrete model trains through the real runner with its estimator's state
    (baseline network, annealing step) checkpointed. A run interrupted after its step-3
    checkpoint resumes there (it takes only the 3 remaining steps) and ends bit-identical
    to an uninterrupted run, estimator state included; a finished run takes no step."""
    import lvmbench.train as train_module
    from lvmbench.settings import Cell

    cell = Cell.from_dict({"experiment": "t", "dataset": "mnist5k", "model": model, "objective": "iwae",
                           "K": K, "estimator": estimator, "seed": 0, "model_options": options,
                           "estimator_options": est_options,
                           "train": {"steps": 6, "batch_size": 8, "log_every": 2, "checkpoint_every": 3}})
    summary = train_module.train(cell, tmp_path / "whole", progress=False)
    assert summary["steps"] == 6 and math.isfinite(summary["final_bound"])
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    if estimator == "gumbel":
        assert int(whole["estimator"]["step"]) == 6

    calls = train_steps.calls
    train_steps.run(interrupt_at=5)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(cell, tmp_path / "resumed", progress=False)
    train_steps.run()
    assert train_module.train(cell, tmp_path / "resumed", progress=False)["steps"] == 6
    assert len(calls) == 3  # resumed at the step-3 checkpoint, not retrained
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    for part in ("model", "estimator"):
        assert whole[part].keys() == resumed[part].keys()
        for key in whole[part]:
            assert torch.equal(whole[part][key], resumed[part][key]), (part, key)
    calls.clear()
    assert train_module.train(cell, tmp_path / "resumed", progress=False)["steps"] == 6
    assert not calls  # already finished: no step taken


def test_exactness_is_read_from_the_built_model():
    """A tiny sigmoid belief net is exact (enumerable), so the exact objective and gradient
    run on it; one of the default size is not. The registry and the instance agree because
    both read the one declaration, the model's ``exact`` property."""
    assert why_invalid("sbn", "exact", 1, "exact", model_options={"latent": [2, 2]}) is None
    assert "needs an exact log p(x)" in why_invalid("sbn", "exact", 1, "exact")
    assert build_model("sbn", 4, latent=[2, 2]).exact and not build_model("sbn", 4).exact
