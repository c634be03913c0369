"""Per-datapoint inference and the amortization gap (lvmbench.amortization).

On the linear-Gaussian model the exact posterior lies in the per-point family (full
covariance), so optimising q_i must drive the ELBO to the exact log p(x) and
KL(q_i || p(z|x_i)) towards 0. On a small VAE the guarantee is checked: per-datapoint
optimisation never lowers the bound on any point, even when the optimiser diverges."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from torch.distributions import kl_divergence

from lvmbench.cli import main
from lvmbench.errors import LvmbenchError
from lvmbench.estimators import make_estimator
from lvmbench.measure.amortization import crn_bounds, per_datapoint_inference
from lvmbench.models import build_model
from lvmbench.objectives import make_objective
from lvmbench.rng import stream_seed
from lvmbench.settings import TrainSettings
from lvmbench.train import Ensemble, train_step

ELBO, IWAE = make_objective("elbo"), make_objective("iwae")


def test_linear_gaussian_per_datapoint_elbo_reaches_log_px(lab):
    """Start: an encoder ~7.7 nats (KL) off the posterior. After 300 Adam steps the
    per-point ELBO is within 0.03 nats of exact log p(x) on average (2% of the start), and
    KL(q_i || p(z|x_i)) shrinks by more than 50x."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=20, encoder_noise=0.5)
    r = per_datapoint_inference(model, x, ELBO, K=1, steps=300, lr=0.05, K_eval=500, check_every=5, seed=0)
    assert r.family == "full"
    before = (r.exact_log_px - r.bound_amortized).mean()
    after = (r.exact_log_px - r.bound_per_datapoint).mean()
    assert before > 2.0
    assert after.abs() < 0.03 and after.abs() < 0.02 * before
    post = model.posterior(x)
    kl_before, kl_after = kl_divergence(r.q_amortized, post), kl_divergence(r.q_per_datapoint, post)
    assert kl_after.mean() < kl_before.mean() / 50
    assert (r.selection_gap >= 0).all()
    # the amortized side is the encoder itself, evaluated on the report set's common random numbers
    torch.testing.assert_close(r.q_amortized.loc, model.encoder(x).loc)
    direct, _ = crn_bounds(model, x, model.encoder(x), ELBO, 1, 500, seed=stream_seed(r.seed, "amortization_evaluation"))
    torch.testing.assert_close(direct, r.bound_amortized, atol=1e-8, rtol=0)
    s = r.summary()
    assert s["gap"] == pytest.approx(float(r.gap.mean())) and s["gap"] > 2.0 and s["log_px_exact"]
    assert s["approximation_gap"] == pytest.approx(float(after), abs=1e-9)


def test_linear_gaussian_iwae_objective(lab):
    model, x = lab.lg(x_dim=2, z_dim=2, B=10, encoder_noise=0.5)
    r = per_datapoint_inference(model, x, IWAE, K=4, steps=100, lr=0.05, K_eval=400, check_every=10)
    assert (r.selection_gap >= 0).all() and r.gap.mean() > 0.1
    # L_K <= L_{K_eval} <= log p(x) up to Monte Carlo error
    assert (r.log_px_per_datapoint.mean() - r.exact_log_px.mean()).abs() < 0.02
    again = per_datapoint_inference(model, x, IWAE, K=4, steps=100, lr=0.05, K_eval=400, check_every=10)
    assert torch.equal(again.bound_per_datapoint, r.bound_per_datapoint)  # seeded
    with pytest.raises(LvmbenchError, match="multiple of the iwae group size 4"):
        per_datapoint_inference(model, x, IWAE, K=4, steps=1, K_eval=10)


def _tiny_trained_vae(seed: int = 0, steps: int = 30):
    torch.manual_seed(seed)
    model = build_model("vae", 16, hidden=[[12, 12]], latent=[3])
    x = torch.bernoulli(torch.rand(1, 16).expand(64, 16))
    model.init_from_data(x)
    ensemble = Ensemble.of([model], [make_estimator("reparam")], ELBO, 1, TrainSettings(lr=1e-2), [seed])
    for step in range(steps):
        train_step(ensemble, x[None, :32], step, 1e-2)
    ensemble.write_back(0, model)
    return model, x[32:52]


@pytest.mark.parametrize("lr", [0.05, 5.0])
def test_vae_per_datapoint_never_lowers_the_bound(lr):
    """lr=0.05 improves the bound on fresh samples (mean reported gap > 2 SE; about half the
    points keep the encoder's q, whose gap is then exactly 0); lr=5 makes Adam overshoot
    wildly, and the best-seen rule must still give after >= before on every point on the
    selection samples."""
    model, x = _tiny_trained_vae()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    r = per_datapoint_inference(model, x, ELBO, K=1, steps=40, lr=lr, K_eval=200, check_every=5, seed=3)
    assert r.family == "diagonal" and r.exact_log_px is None
    assert (r.selection_gap >= 0).all()
    assert torch.isfinite(r.bound_per_datapoint).all()
    if lr < 1:
        assert r.gap.mean() > 2 * r.gap.std() / math.sqrt(len(r.gap))
    kept = r.best_step == 0
    assert (r.gap[kept] == 0).all() and (r.selection_gap[kept] == 0).all()
    # the reported per-point bound is what the kept q gives on the report set's common random numbers
    again, _ = crn_bounds(model, x, r.q_per_datapoint, ELBO, 1, 200, seed=stream_seed(r.seed, "amortization_evaluation"))
    torch.testing.assert_close(again.float(), r.bound_per_datapoint.float(), atol=1e-4, rtol=0)
    # the model is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    table = r.table()
    assert len(table) == 20 and {"bound_amortized", "bound_per_datapoint", "gap", "best_step"} <= set(table)


def _exact_gap(model, x, r):
    """The exact ELBO gap of the kept per-point q over the encoder's q (closed form)."""
    with torch.no_grad():
        return model.exact_elbo(x, r.q_per_datapoint) - model.exact_elbo(x, r.q_amortized)


@pytest.mark.parametrize("noise, steps", [(0.5, 60), (0.05, 30)])
def test_reported_gap_is_unbiased_for_the_exact_gap(lab, noise, steps):
    """The reported gap (kept q chosen on the selection samples, reported on independent
    ones) is unbiased for the exact ELBO gap of the kept q: mean(reported - exact) within
    3 SE of 0 over 60 points (SE of the paired per-point errors; a 0.3% two-sided tail).
    The selection-set gap is not: it exceeds the exact gap by more than 3 SE where the
    encoder is near the posterior (noise 0.05, the regime of the issue: a gap of ~0.004 nats
    reported where the true one was ~0.001). The true gap of the best q, log p(x) - ELBO(q_enc)
    in closed form (the posterior is in the family), is never exceeded by more than 3 SE."""
    model, x = lab.lg(x_dim=3, z_dim=2, B=60, encoder_noise=noise, seed=1)
    r = per_datapoint_inference(model, x, ELBO, K=1, steps=steps, lr=0.02, K_eval=20, check_every=1, seed=0)
    exact = _exact_gap(model, x, r)
    moved = r.best_step > 0
    error = (r.gap - exact)[moved]
    z = error.mean() / (error.std() / moved.sum().sqrt())
    assert moved.sum() >= 20 and z.abs() < 3, (z, error.mean())
    best = (model.log_marginal(x) - model.exact_elbo(x)).detach()
    slack = r.gap - best
    assert slack.mean() < 3 * slack.std() / math.sqrt(len(slack))
    if noise < 0.1:
        excess = (r.selection_gap - exact)[moved]
        assert excess.mean() > 3 * excess.std() / moved.sum().sqrt(), excess.mean()


def test_refuses_non_gaussian_encoders_and_objectives(lab):
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    for model in (build_model("vae", 12, hidden=[[8, 8]], latent=[2], flow={"type": "iaf", "layers": 1, "hidden": 4}),
                  build_model("vae", 12, layers=2, hidden=[[8, 8], [4, 4]], latent=[4, 2])):
        with pytest.raises(LvmbenchError, match="needs a Gaussian encoder"):
            per_datapoint_inference(model, x, ELBO, K=1, steps=1, K_eval=10)
    gmm = build_model("gmm", 2, components=3)
    with pytest.raises(LvmbenchError, match="needs a Gaussian encoder"):
        per_datapoint_inference(gmm, torch.randn(4, 2), ELBO, K=1, steps=1, K_eval=10)
    model, xl = lab.lg(x_dim=2, z_dim=1, B=4)
    for name in ("exact", "prior_mc"):
        with pytest.raises(LvmbenchError, match="sampled bound with the encoder as proposal"):
            per_datapoint_inference(model, xl, make_objective(name), K=1, steps=1, K_eval=10)


def test_cli_amortize_writes_json_and_csv(tmp_path, capsys):
    from lvmbench.settings import Cell
    from lvmbench.train import train

    cell = Cell.from_dict({
        "experiment": "amort", "dataset": "gaussian_toy", "model": "lg", "model_name": "linear_gaussian",
        "objective": "iwae", "objective_name": "iwae", "K": 2, "estimator": "reparam", "seed": 0,
        "dataset_options": {"dim": 3, "n_train": 64, "n_test": 16},
        "model_options": {"decoder": "linear", "z_dim": 2, "q_scale": None},
        "train": {"steps": 20, "batch_size": 16, "checkpoint_every": 20, "log_every": 10}})
    run = tmp_path / "run"
    train(cell, run, progress=False, device="cpu")
    assert main(["amortize", str(run), "--n-test", "10", "--steps", "30", "--lr", "0.05", "--K-eval", "100",
                 "--quiet"]) == 0
    summary = json.loads((run / "amortization.json").read_text())
    for key in ("cell", "n_points", "steps", "K", "bound_amortized", "bound_per_datapoint", "gap", "gap_se"):
        assert key in summary
    assert summary["cell"] == cell.id and summary["n_points"] == 10 and summary["K"] == 2
    assert summary["objective"] == "iwae" and summary["selection_gap"] >= 0
    table = pd.read_csv(run / "amortization.csv")
    assert len(table) == 10 and (table.selection_gap >= 0).all()
    assert "amortization gap" in capsys.readouterr().err

    out = tmp_path / "elsewhere" / "gap.json"
    assert main(["amortize", str(run), "--n-test", "4", "--steps", "2", "--K-eval", "10", "--objective", "elbo",
                 "--K", "1", "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["objective"] == "elbo" and (out.with_suffix(".csv")).exists()

    assert main(["amortize", str(run), "--K-eval", "7", "--quiet"]) == 2  # 7 is not a multiple of K=2
    assert main(["amortize", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_amortize_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["amortize", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "amortization gap" in text and "--K-eval" in text and "--n-test" in text
