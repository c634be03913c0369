"""Gradient estimators against exact gradients, and the registry's refusals.

Exact gradients come from :mod:`lvmbench.exact` (closed-form ELBO, Gauss-Hermite
quadrature on a 1-D latent, enumeration of a GMM's categorical encoder), all in float64.

Statistical tests compare the mean of 4000 independent gradient draws with the exact
gradient per parameter component, at 4 standard errors. The SE comes from 50 iid group
means of 80 draws each (t distribution with 49 dof: P(|t| > 4) ~ 2e-4 per component), so
with ~10-50 components per case the chance of a false alarm in one case is <= 1%
(Bonferroni); models with more than 60 components (the tiny SBN and categorical VAE)
use 100 groups (8000 draws, 99 dof: ~1e-4 per component). The seeds are fixed, so a pass
is reproducible. A biased estimator fails when its bias exceeds ~4 SE: the STL test below
shows this for a real bias, and deliberately broken estimators (score without its score
term, DReG with w~ instead of w~^2, VIMCO without its leave-one-out signal, piwae's
encoder with the wrong M, reparam without the path through z) all failed with max
z-scores of 50-350 when tried.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lvmbench.errors import LvmbenchError
from lvmbench.estimators import ESTIMATORS, SurrogateParts, bias_reason, gradients, make_estimator
from lvmbench.exact import exact_gradients, exact_method, expected_bound
from lvmbench.grid import why_invalid
from lvmbench.models import MODELS, build_model, log_weights
from lvmbench.objectives import OBJECTIVES, make_objective

# (setup, model registry name, [(objective, options, K), ...]); every case has an exact method.
# Order matters: the first case of each (estimator, objective) pair runs by default, the
# rest are marked slow (``pytest -m slow``).
SETUPS = {
    # discrete latent: enumeration of the categorical encoder (and prior, for prior_mc)
    "gmm": ("gmm", [("elbo", {}, 2), ("iwae", {}, 2), ("iwae", {}, 3), ("miwae", {"M": 2}, 4),
                    ("ciwae", {"beta": 0.3}, 2), ("piwae", {"M": 2}, 4), ("prior_mc", {}, 3), ("exact", {}, 1)]),
    # 1-D latent: Gauss-Hermite quadrature for every sampled bound
    "lg1d": ("linear_gaussian", [("elbo", {}, 2), ("iwae", {}, 2), ("iwae", {}, 3), ("miwae", {"M": 2}, 4),
                                 ("ciwae", {"beta": 0.3}, 2), ("piwae", {"M": 2}, 4), ("piwae", {"M": 2}, 2),
                                 ("prior_mc", {}, 2), ("exact", {}, 1)]),
    # 2-D latent: only the ELBO (closed form) and log p(x) are exact
    "lg2d": ("linear_gaussian", [("elbo", {}, 3), ("iwae", {}, 1), ("miwae", {"M": 2}, 2),
                                 ("ciwae", {"beta": 0.3}, 1), ("exact", {}, 1)]),
    # tiny discrete models with enumerable latent_states(): a 2-layer SBN (Chain encoder)
    "sbn": ("sbn", [("elbo", {}, 2), ("iwae", {}, 2), ("miwae", {"M": 2}, 4), ("ciwae", {"beta": 0.3}, 2),
                    ("piwae", {"M": 2}, 4), ("prior_mc", {}, 2)]),
    "catvae": ("catvae", [("elbo", {}, 2), ("iwae", {}, 3), ("prior_mc", {}, 2)]),
}


def make_setup(lab, setup: str):
    if setup == "lg2d":
        return lab.lg(x_dim=2, z_dim=2)
    if setup == "lg1d":
        return lab.lg(x_dim=2, z_dim=1)
    return getattr(lab, setup)()


def _applicable(model: str, objective: str, options: dict, K: int, estimator: str) -> bool:
    """Declared by the registry to run, and declared unbiased."""
    if why_invalid(model, objective, K, estimator, objective_options=options) is not None:
        return False
    return bias_reason(estimator, make_objective(objective, **options), K) is None


def _cases():
    cases = []
    for setup, (model, objectives) in SETUPS.items():
        for obj, opts, K in objectives:
            for est in ESTIMATORS:
                if not _applicable(model, obj, opts, K, est.name):
                    continue
                name = f"{setup}-{obj}{''.join(f'-{k}{v}' for k, v in opts.items())}-K{K}-{est.name}"
                cases.append(pytest.param(setup, obj, opts, K, est.name, id=name))
    return cases


CASES = _cases()


def test_every_declared_unbiased_pair_is_covered():
    """Each estimator is checked, by default (not only under -m slow), with every
    objective it declares and can run unbiasedly for some K, so registering a new
    pair needs a new case. Estimators declared biased everywhere (gumbel,
    straight_through) are exempt."""
    covered = {(c.values[4], c.values[1]) for c in CASES if not c.marks}
    for est in ESTIMATORS:
        for obj in est.obj.objectives:
            o = make_objective(obj)
            if all(bias_reason(est.name, o, K) is not None for K in (1, 2, 4, 8, 16)):
                continue
            assert (est.name, obj) in covered, f"no unbiasedness case for estimator {est.name} with {obj}"


def _report(stats, exact, z, k: int = 5) -> str:
    worst = torch.argsort(z, descending=True)[:k]
    return "; ".join(f"{stats.names[i]}: mc={stats.mean[i]:.5g} exact={exact[i]:.5g} "
                     f"se={stats.se[i]:.2g} z={z[i]:.2f}" for i in worst)


@pytest.mark.parametrize("setup, objective, options, K, estimator", CASES)
def test_unbiased_gradient(lab, setup, objective, options, K, estimator):
    """Mean of 4000 draws within 4 SE of the exact gradient, every component (see the
    module docstring for the tolerance)."""
    model, x = make_setup(lab, setup)
    obj = make_objective(objective, **options)
    assert exact_method(model, obj, x, K) is not None
    g_theta, g_phi = exact_gradients(model, obj, x, K)
    exact = lab.flat(g_theta + g_phi)
    assert exact.abs().max() > 1e-2  # a generic point: the check is not against zeros
    groups = 100 if len(exact) > 60 else 50  # more dof for the SE with more components
    stats = lab.stats(model, estimator, obj, x, K, groups=groups, reps=80, seed=1)
    z = lab.z_scores(stats, exact, atol=1e-9 * (1 + exact.abs().max().item()))
    assert z.max() <= 4, _report(stats, exact, z)


def test_exact_estimator_matches_exact_module(lab):
    """The ``exact`` estimator is deterministic: identical to autograd through
    expected_bound for objective ``exact`` (float64 rounding)."""
    for model, x in (lab.lg(x_dim=3, z_dim=2), lab.gmm()):
        obj = make_objective("exact")
        est = gradients(make_estimator("exact")(model, obj, x, 1), model.decoder_parameters(),
                        model.encoder_parameters())
        ref = exact_gradients(model, obj, x, 1)
        torch.testing.assert_close(lab.flat(est[0] + est[1]), lab.flat(ref[0] + ref[1]), rtol=0, atol=1e-12)


def test_score_iwae_k2_discrete_gradient_is_nonzero(lab):
    """Score-function IWAE with K=2 on the GMM's categorical encoder: the exact encoder
    gradient is nonzero and the estimator finds it (a popular library's score-function
    IWAE returns 0 here). Tolerance: 4 SE per component as in the module docstring, and
    "nonzero" means some component of the MC mean more than 6 SE from zero."""
    model, x = lab.gmm()
    obj = make_objective("iwae")
    _, g_phi = exact_gradients(model, obj, x, 2)
    exact_phi = lab.flat(g_phi)
    assert exact_phi.abs().max() > 1e-2
    stats = lab.stats(model, "score", obj, x, 2, groups=50, reps=80, seed=2)
    n_theta = sum(p.numel() for p in model.decoder_parameters())
    mean_phi, se_phi = stats.mean[n_theta:], stats.se[n_theta:]
    assert ((mean_phi - exact_phi).abs() <= 4 * se_phi + 1e-12).all()
    assert (mean_phi.abs() / se_phi.clamp_min(1e-300)).max() > 6


def test_stl_iwae_bias_measured_and_dreg_unbiased(lab, capsys):
    """STL on IWAE with K=2 drops a score term with nonzero mean (Tucker et al. 2018):
    measure the bias and report it (printed; see ``pytest -s``). The registry declares it,
    and DReG on the same setup is unbiased. The measured bias is large enough here
    (> 6 SE at some component, 8000 draws) that this also shows the unbiasedness test
    has the power to catch a real bias."""
    obj = make_objective("iwae")
    K = 2
    assert bias_reason("stl", obj, K) is not None
    assert bias_reason("stl", obj, 1) is None and bias_reason("dreg", obj, K) is None
    model, x = lab.lg(x_dim=2, z_dim=1)
    _, g_phi = exact_gradients(model, obj, x, K)
    exact_phi = lab.flat(g_phi)
    n_theta = sum(p.numel() for p in model.decoder_parameters())
    names = lab.names(model)[n_theta:]
    results = {}
    for est in ("stl", "dreg"):
        s = lab.stats(model, est, obj, x, K, groups=100, reps=80, seed=3)
        bias, se = s.mean[n_theta:] - exact_phi, s.se[n_theta:]
        results[est] = (bias, se)
        with capsys.disabled():
            print(f"\n[{est} iwae K={K}] encoder-gradient bias (mc - exact) +- se:")
            for n, b, e, ex in zip(names, bias, se, exact_phi):
                print(f"    {n:18s} bias={b:+.4f} +- {e:.4f}   (exact grad {ex:+.4f})")
    stl_z = (results["stl"][0].abs() / results["stl"][1]).max()
    dreg_z = (results["dreg"][0].abs() / results["dreg"][1]).max()
    assert stl_z > 6, f"STL bias not detected (max z {stl_z:.2f})"
    assert dreg_z <= 4, f"DReG looks biased (max z {dreg_z:.2f})"


def test_lvmbench_list_states_when_stl_is_biased_and_how_much(capsys):
    """Where users look: ``lvmbench list`` shows STL's bias declaration, the condition and
    the measured size (checked by the next test)."""
    from lvmbench.cli import main

    assert main(["list"]) == 0
    stl = " ".join(capsys.readouterr().out.split("\n  stl ", 1)[1].split("\n  dreg ", 1)[0].split())
    assert "bias: biased (encoder) when a group holds > 1 sample (iwae K > 1)" in stl and "6x the unbiased" in stl


@pytest.mark.slow
def test_stl_bias_on_the_rainforth_toy_is_what_its_declaration_says(one_thread):
    """The size STL's bias declaration states (shown by ``lvmbench list``): on the 20-D toy
    at its optimum plus N(0, 0.01^2) noise, iwae K=10, 32 points, 500 draws, STL's mean
    encoder gradient is 4-8x as long as reparam's (unbiased, same random numbers) and off
    it by 3-8x that length (measured on seeds 0 and 1 with 2000 draws: 5.8x and 4.9x, 5.9x and
    4.9x); the bias is > 5 times its Monte Carlo noise, while the decoder gradients agree
    exactly (STL changes only the encoder's surrogate)."""
    from lvmbench.data import load_dataset
    from lvmbench.measure.gradvar import gradient_variance, move_to_optimum

    data = load_dataset("gaussian_toy", None)
    torch.manual_seed(0)
    model = build_model("linear_gaussian", 20)
    move_to_optimum(model, data.train, 0.01, seed=0)
    df = gradient_variance(model, make_objective("iwae"), "linear_gaussian", data.train[:32], 10, ["stl", "reparam"],
                           draws=500, seed=0, progress=False).set_index(["estimator", "group"])
    stl, reparam = df.loc[("stl", "encoder")], df.loc[("reparam", "encoder")]
    assert stl.bias_reference == "reparam" and "biased" in stl.biased and pd.isna(reparam.biased)
    assert 4 < stl.grad_norm / reparam.grad_norm < 8 and 3 < stl.relative_bias < 8
    assert stl.bias > 5 * stl.bias_noise
    assert df.loc[("stl", "decoder"), "bias"] == 0


def test_zero_variance_at_posterior(lab):
    """With q = p(z|x), every log-weight equals log p(x), so STL's and DReG's encoder
    gradients are exactly zero for every objective they support (float64, atol 1e-10),
    while reparam's are not (its score term -dlog q/dphi is zero only in expectation)."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=4)
    model.set_encoder_to_posterior()
    phi = model.encoder_parameters()
    torch.manual_seed(0)
    for objective, opts, K in [("elbo", {}, 4), ("iwae", {}, 4), ("miwae", {"M": 2}, 4),
                               ("ciwae", {}, 4), ("piwae", {"M": 2}, 4)]:
        obj = make_objective(objective, **opts)
        for est in ("stl", "dreg"):
            assert objective in ESTIMATORS[est].obj.objectives
            _, g = gradients(make_estimator(est)(model, obj, x, K), model.decoder_parameters(), phi)
            assert lab.flat(g).abs().max() < 1e-10, (est, objective)
        _, g = gradients(make_estimator("reparam")(model, obj, x, K), model.decoder_parameters(), phi)
        assert lab.flat(g).abs().max() > 1e-3, ("reparam", objective)


def test_gradients_helper_zero_fills():
    """Parameters a surrogate does not reach get zero gradients, not None."""
    model = build_model("linear_gaussian", 2, decoder="linear", q_scale=None)
    obj = make_objective("prior_mc")
    g_theta, g_phi = gradients(make_estimator("reparam")(model, obj, torch.randn(3, 2), 2),
                               model.decoder_parameters(), model.encoder_parameters())
    assert all((g == 0).all() for g in g_phi) and len(g_phi) == 3
    assert any((g != 0).any() for g in g_theta)


# ---------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, objective, K, estimator, options, expect", [
    ("gmm", "elbo", 1, "reparam", None, "reparameterizable"),
    ("gmm", "iwae", 4, "dreg", None, "reparameterizable"),
    ("linear_gaussian", "prior_mc", 4, "stl", None, "stl supports objectives"),
    ("linear_gaussian", "prior_mc", 4, "dreg", None, "not prior_mc"),
    ("vae", "exact", 1, "exact", None, "needs an exact log p(x)"),
    ("linear_gaussian", "miwae", 5, "reparam", None, "multiple of M"),
    ("linear_gaussian", "miwae", 6, "reparam", {"M": 4}, "M=4"),
    ("linear_gaussian", "exact", 2, "exact", None, "only K=1"),
    ("linear_gaussian", "iwae", 1, "exact", None, "supports objectives"),
    ("linear_gaussian", "exact", 1, "reparam", None, "not exact"),
])
def test_why_invalid_reasons(model, objective, K, estimator, options, expect):
    reason = why_invalid(model, objective, K, estimator, objective_options=options)
    assert reason is not None and expect in reason
    assert "\n" not in reason


@pytest.mark.parametrize("model, objective, K, estimator", [
    ("gmm", "iwae", 64, "score"), ("gmm", "prior_mc", 5, "score"), ("gmm", "exact", 1, "exact"),
    ("linear_gaussian", "iwae", 64, "dreg"), ("linear_gaussian", "iwae", 64, "stl"),
    ("linear_gaussian", "miwae", 16, "dreg"), ("vae", "piwae", 64, "dreg"), ("vae", "elbo", 1, "reparam"),
])
def test_why_invalid_accepts(model, objective, K, estimator):
    assert why_invalid(model, objective, K, estimator) is None


@pytest.mark.parametrize("args, expect", [
    (("gmm", "iwae", 0, "score"), "K must be an integer >= 1"),
    (("gmm", "iwae", -3, "score"), "K must be an integer >= 1"),
    (("gmm", "iwae", 2.0, "score"), "K must be an integer >= 1"),
    (("gmm", "iwae", True, "score"), "K must be an integer >= 1"),
    (("hmm", "iwae", 1, "score"), "unknown model 'hmm'; choose one of: " + ", ".join(MODELS.names())),
    (("gmm", "iwea", 1, "score"), "unknown objective 'iwea' (did you mean 'iwae'?); choose one of: "
     + ", ".join(OBJECTIVES.names())),
    (("gmm", "iwae", 1, "rebar"), "unknown estimator 'rebar'; choose one of: " + ", ".join(ESTIMATORS.names())),
])
def test_why_invalid_raises(args, expect):
    with pytest.raises(LvmbenchError) as info:
        why_invalid(*args)
    assert str(info.value).startswith(expect) and "\n" not in str(info.value)


def test_why_invalid_with_dataset():
    """Model/data kind mismatches are refused; unknown datasets list the choices."""
    reason = why_invalid("vae", "iwae", 1, "reparam", dataset="gaussian_toy")
    assert reason is not None and "binary_image" in reason and "continuous" in reason
    assert why_invalid("gmm", "iwae", 2, "score", dataset="gmm2d") is None
    assert why_invalid("linear_gaussian", "iwae", 4, "dreg", dataset="gaussian_toy") is None
    with pytest.raises(LvmbenchError, match="unknown dataset 'nope'; choose one of: .*gaussian_toy"):
        why_invalid("gmm", "iwae", 1, "score", dataset="nope")


def test_option_errors_are_one_line():
    for call, expect in [
        (lambda: make_objective("miwae", M=0), "M must be an integer >= 1"),
        (lambda: make_objective("ciwae", beta=1.5), "beta must lie in [0, 1]"),
        (lambda: make_objective("iwae", M=2), "objective iwae takes options none"),
        (lambda: build_model("linear_gaussian", 3, decoder="cubic"), "decoder must be"),
        (lambda: build_model("linear_gaussian", 3, z_dim=2), "needs z_dim == x_dim"),
        (lambda: build_model("vae", 4, layers=3), "layers must be 1 or 2"),
        (lambda: build_model("gmm", 2, colours=3), "model gmm:"),
    ]:
        with pytest.raises(LvmbenchError) as info:
            call()
        assert expect in str(info.value) and "\n" not in str(info.value)


def test_registry_declarations_consistent():
    """Every objective an estimator declares exists; requires_rsample matches what the
    estimator does with a non-reparameterizable model (it cannot sample with a path)."""
    for est in ESTIMATORS:
        assert set(est.obj.objectives) <= set(OBJECTIVES.names())
    assert MODELS["gmm"].obj.reparameterizable is False
    model = build_model("gmm", 2)
    with pytest.raises(NotImplementedError):
        log_weights(model, torch.randn(3, 2), 2, "encoder", rsample=True)
    assert isinstance(make_estimator("score")(model, make_objective("iwae"), torch.randn(3, 2), 2), SurrogateParts)


def test_estimators_report_the_bound(lab):
    """``parts.bound`` is the objective per data point and is detached."""
    model, x = lab.lg(x_dim=2, z_dim=1)
    obj = make_objective("iwae")
    for est in ("reparam", "score", "stl", "dreg"):
        torch.manual_seed(5)
        parts = make_estimator(est)(model, obj, x, 3)
        torch.manual_seed(5)
        lw = log_weights(model, x, 3, "encoder", rsample=est != "score")
        assert parts.bound.shape == (x.shape[0],) and not parts.bound.requires_grad
        torch.testing.assert_close(parts.bound, obj.decoder(lw.log_w).detach())
    assert expected_bound(model, obj, x, 3) is not None
