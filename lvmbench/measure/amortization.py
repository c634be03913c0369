"""Per-datapoint (non-amortized) inference and the amortization gap.

An encoder q_phi(z|x) shares its parameters over all data points, so on a given x it
may be worse than the best member of its family for that x. Cremer, Li & Duvenaud
(2018, "Inference suboptimality in variational autoencoders", ICML) split the gap
between log p(x) and the bound L[q] of the amortized posterior into

    log p(x) - L[q_phi(.|x)] = (log p(x) - L[q*_x])  +  (L[q*_x] - L[q_phi(.|x)]),
                                approximation gap       amortization gap

with q*_x the best q in the encoder's family for that x alone. Here q*_x is
approximated by optimising free per-point parameters, started at the encoder's output:

* family: the encoder's own. An Independent Normal encoder (VAE with 1 stochastic
  layer) gives q_i = N(m_i, diag(s_i^2)), parameters (m_i, log s_i); a MultivariateNormal
  one (linear_gaussian) gives q_i = N(m_i, L_i L_i^T) with L_i lower triangular,
  parameterised by its strictly-lower part and log-diagonal. Both are batches of shape
  (N, D) / (N, D, D): all points are optimised at once, never in a Python loop.
* objective: the run's bound f (elbo, iwae, miwae, ...; its encoder form, with K samples),
  ascended with reparameterized gradients, z = m_i + L_i eps, by Adam with the model's
  parameters frozen. Adam's update is elementwise and the loss is a sum over points, so
  this is exactly N independent optimisations.
* evaluation: E[f_K] is estimated from K_eval samples per point, split into groups of the
  objective's group size (K for iwae, 1 for the ELBO; see :mod:`lvmbench.objectives`),
  with *common random numbers*: the same seed, hence the same eps, at every evaluation of
  one sample set. The log-weights come from :func:`lvmbench.models.base.log_weights` with
  the per-point q as the proposal. L_{K_eval} = log (1/K_eval) sum_k w_k (a log p(x)
  estimate, Burda et al. 2016) is reported from the same samples.
* selection, then an independent report: every ``check_every`` steps and after the last
  one, each point keeps the parameters with the best estimate seen so far on the
  *selection* samples (the encoder's own output included, so on those samples the kept q
  is never worse than the encoder's). Keeping the maximum of noisy estimates biases them
  upward, so the reported bounds of the encoder's q and of the kept q come from a second,
  independent *report* sample set: given the selection, they are unbiased estimates of the
  two expected bounds, and their difference of the amortization gap of the kept q
  (Cremer et al. 2018 select the per-datapoint q on samples other than those they report).
  The selection-set gap (``selection_gap``, >= 0 on every point) is kept for comparison;
  its excess over the reported gap measures the selection bias.

The amortization gap is the mean over points of bound_per_datapoint - bound_amortized on
the report samples, with the standard error of the paired differences (points where the
encoder's q was kept contribute exactly 0). With ``steps`` finite, q*_x is only
approached, so this is a lower estimate of the gap of the best q in expectation.

Random streams (lvmbench.rng, from the amortization seed): ``amortization`` for the
optimisation's samples, ``amortization_selection`` and ``amortization_evaluation`` for the
selection and report sample sets, ``amortization_binarization`` for the test points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, constraints, transform_to

from lvmbench.errors import LvmbenchError
from lvmbench.io import save_csv
from lvmbench.models.base import LatentVariableModel, gaussian_family, log_weights
from lvmbench.objectives import Objective, grouped_iwae
from lvmbench.grid import amortization_objective, amortization_sizes
from lvmbench.progress import track
from lvmbench.rng import forked_rng, stream, stream_seed
from lvmbench.runs import RunDir, holds_run, load_trained
from lvmbench.settings import AmortizeSettings
from lvmbench.stats import log_mean_exp, mean_se


# ---------------------------------------------------------------------------------------
# per-point Gaussian families
# ---------------------------------------------------------------------------------------
class _PerPointMVN(MultivariateNormal):
    """N(m_i, L_i L_i^T) with one Cholesky factor per point. log_prob applies L_i^-1 (N small
    triangular inverses) by a batched product: torch's generic path solves one triangular
    system with K right-hand sides per point, which is far slower on CPU for small D.

        log q_i(z) = -D/2 log 2pi - sum_d log L_i[d, d] - |L_i^-1 (z - m_i)|^2 / 2
    """

    def log_prob(self, value: Tensor) -> Tensor:
        L = self._unbroadcasted_scale_tril
        eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
        u = (torch.linalg.solve_triangular(L, eye, upper=False) @ (value - self.loc).unsqueeze(-1)).squeeze(-1)
        half_log_det = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * (L.shape[-1] * math.log(2 * math.pi) + (u ** 2).sum(-1)) - half_log_det


class PerPointGaussian:
    """Free per-point parameters of the encoder's Gaussian family, initialised at q_phi(z|x).

    ``loc`` (N, D) and ``scale`` -- log std (N, D) for a diagonal family, or the
    unconstrained lower-Cholesky factor (N, D, D) (strictly-lower part and log-diagonal,
    torch's ``transform_to(constraints.lower_cholesky)``) for a full-covariance one.
    """

    def __init__(self, q: Distribution, n: int):
        self.family = gaussian_family(q)
        if self.family == "diagonal":
            loc, scale = q.base_dist.loc, q.base_dist.scale.log()
        elif self.family == "full":
            self._to_tril = transform_to(constraints.lower_cholesky)
            loc, scale = q.loc, self._to_tril.inv(q.scale_tril)
        else:
            raise LvmbenchError(
                "per-datapoint inference needs a Gaussian encoder (Independent Normal or MultivariateNormal, "
                f"e.g. vae with 1 stochastic layer or linear_gaussian); this model's encoder is {type(q).__name__}"
                + (" (a normalizing flow)" if type(q).__name__ == "TransformedDistribution" else ""))
        if tuple(q.batch_shape) != (n,):
            raise LvmbenchError(f"per-datapoint inference expects an encoder with batch shape ({n},), "
                                f"got {tuple(q.batch_shape)}")
        d = q.event_shape[0]
        self.loc = loc.detach().expand(n, d).clone().requires_grad_(True)
        shape = (n, d) if self.family == "diagonal" else (n, d, d)
        self.scale = scale.detach().expand(shape).clone().requires_grad_(True)

    def params(self) -> list[Tensor]:
        return [self.loc, self.scale]

    def distribution(self, loc: Tensor | None = None, scale: Tensor | None = None) -> Distribution:
        """q_i for every point, batch shape (N,), from the current (or the given) parameters."""
        loc = self.loc if loc is None else loc
        scale = self.scale if scale is None else scale
        if self.family == "diagonal":
            return Independent(Normal(loc, scale.exp(), validate_args=False), 1, validate_args=False)
        return _PerPointMVN(loc, scale_tril=self._to_tril(scale), validate_args=False)


# ---------------------------------------------------------------------------------------
# evaluation with common random numbers
# ---------------------------------------------------------------------------------------
def group_sizes(objective: Objective, K: int) -> list[tuple[int, float]]:
    """(group size, weight) of each of the objective's encoder terms: f = sum_i w_i G_{M_i}
    with groups of K / M_i samples."""
    return [(K // M, weight) for M, weight in objective.encoder_terms(K)]


@torch.no_grad()
def crn_bounds(model: LatentVariableModel, x: Tensor, q: Distribution, objective: Objective, K: int,
               K_eval: int, seed: int, max_samples: int = 200_000) -> tuple[Tensor, Tensor]:
    """(E[f_K] estimate, L_{K_eval}) per point, both (N,) float64, from K_eval samples of q
    drawn with the global generator seeded at ``seed`` (restored afterwards): the same
    seed and shapes give the same eps, so evaluations of different q are paired.

    E[f_K] = sum_i w_i G_{K_eval / g_i}(log w), g_i = K / M_i the term's group size: the
    average of f's terms over K_eval / g_i disjoint groups (unbiased for E[f_K]).
    Samples are drawn in chunks of at most ``max_samples / N`` (memory bound)."""
    N = x.shape[0]
    chunk = max(1, min(K_eval, max_samples // max(N, 1)))
    with forked_rng(x.device, seed):
        parts = []
        for start in range(0, K_eval, chunk):
            parts.append(log_weights(model, x, min(chunk, K_eval - start), proposal=q).log_w.double())
    log_w = torch.cat(parts)  # (K_eval, N)
    bound = sum(weight * grouped_iwae(log_w, K_eval // g) for g, weight in group_sizes(objective, K))
    return bound, log_mean_exp(log_w)


# ---------------------------------------------------------------------------------------
# optimisation
# ---------------------------------------------------------------------------------------
@dataclass
class AmortizationResult:
    """Per-point results (tensors of shape (N,), float64, on the CPU) and the settings.

    ``bound_*`` are common-random-number estimates of the optimised objective under the
    encoder's q and the kept per-point q on the report samples; ``log_px_*`` are L_{K_eval}
    from the same samples; ``selection_gap`` is the gap on the selection samples (biased
    upward, >= 0); ``best_step`` is the step whose parameters are kept (0 = the encoder's);
    ``q_amortized`` / ``q_per_datapoint`` are the two families of distributions (batch N)."""

    objective: str
    K: int
    K_eval: int
    steps: int
    lr: float
    check_every: int
    seed: int
    family: str
    bound_amortized: Tensor
    bound_per_datapoint: Tensor
    log_px_amortized: Tensor
    log_px_per_datapoint: Tensor
    exact_log_px: Tensor | None
    selection_gap: Tensor
    best_step: Tensor
    q_amortized: Distribution
    q_per_datapoint: Distribution

    @property
    def gap(self) -> Tensor:
        """Amortization gap per point on the report samples: bound_per_datapoint - bound_amortized
        (an unbiased estimate of the kept q's gap; 0 where the encoder's q was kept)."""
        return self.bound_per_datapoint - self.bound_amortized

    def table(self, index: Tensor | np.ndarray | None = None) -> pd.DataFrame:
        """One row per point."""
        n = self.gap.shape[0]
        df = pd.DataFrame({
            "point": np.arange(n) if index is None else np.asarray(index),
            "bound_amortized": self.bound_amortized.numpy(),
            "bound_per_datapoint": self.bound_per_datapoint.numpy(),
            "gap": self.gap.numpy(),
            "selection_gap": self.selection_gap.numpy(),
            "best_step": self.best_step.numpy(),
            "log_px_amortized": self.log_px_amortized.numpy(),
            "log_px_per_datapoint": self.log_px_per_datapoint.numpy(),
        })
        if self.exact_log_px is not None:
            df["exact_log_px"] = self.exact_log_px.numpy()
        return df

    def summary(self) -> dict:
        """Means over points with standard errors; the gaps of Cremer et al. (2018).

        ``log_px`` is exact where the model has it, else the larger of the two L_{K_eval}
        estimates per point (a lower bound, so the approximation gap is then a lower estimate)."""
        log_px = self.exact_log_px if self.exact_log_px is not None else torch.maximum(
            self.log_px_amortized, self.log_px_per_datapoint)
        out = {"n_points": int(self.gap.shape[0]), "steps": self.steps, "K": self.K, "K_eval": self.K_eval,
               "objective": self.objective, "lr": self.lr, "check_every": self.check_every, "seed": self.seed,
               "family": self.family}
        for name, values, with_se in (
                ("bound_amortized", self.bound_amortized, True),
                ("bound_per_datapoint", self.bound_per_datapoint, True), ("gap", self.gap, True),
                ("selection_gap", self.selection_gap, True),
                ("log_px", log_px, False), ("approximation_gap", log_px - self.bound_per_datapoint, True),
                ("log_px_amortized", self.log_px_amortized, False),
                ("log_px_per_datapoint", self.log_px_per_datapoint, False)):
            out[name], se = mean_se(values)
            if with_se:
                out[f"{name}_se"] = se
        return {**out, "improved_fraction": float((self.gap > 0).double().mean()),
                "log_px_exact": self.exact_log_px is not None}


def per_datapoint_inference(model: LatentVariableModel, x: Tensor, objective: Objective, K: int,
                            steps: int = 300, lr: float = 1e-2, K_eval: int = 1000, check_every: int = 10,
                            seed: int = 0, max_samples: int = 200_000,
                            progress: bool = False) -> AmortizationResult:
    """Optimise a separate Gaussian q_i for every row of ``x`` (all at once), starting at the
    encoder's output, keep each point's best iterate on the selection samples and report the
    bound before and after on independent samples (module docstring).

    ``objective`` must be a sampled bound with the encoder as proposal; K_eval must be a
    multiple of each of its group sizes (K for iwae). The model is never changed: its
    parameters get no gradients and its train/eval mode is restored. Seeded: the same
    arguments give the same numbers.
    """
    if not objective.sampled or objective.proposal != "encoder":
        raise LvmbenchError(f"per-datapoint inference optimises a sampled bound with the encoder as proposal; "
                            f"objective {objective.name} is not one (use elbo or iwae)")
    reason = objective.why_invalid(K)
    if reason:
        raise LvmbenchError(reason)
    bad = sorted({g for g, _ in group_sizes(objective, K) if K_eval % g})
    if bad:
        raise LvmbenchError(f"K_eval={K_eval} must be a multiple of the {objective.name} group size "
                            f"{', '.join(map(str, bad))} (K={K})")
    for name, value, low in (("steps", steps, 0), ("K_eval", K_eval, 1), ("check_every", check_every, 1)):
        if value < low:
            raise LvmbenchError(f"{name} must be >= {low}, got {value}")
    if not lr > 0:
        raise LvmbenchError(f"lr must be > 0, got {lr}")

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            q_enc = model.encoder(x)
        free = PerPointGaussian(q_enc, x.shape[0])

        def evaluate(q: Distribution, purpose: str) -> tuple[Tensor, Tensor]:
            return crn_bounds(model, x, q, objective, K, K_eval, stream_seed(seed, purpose), max_samples)

        q_amortized = free.distribution(free.loc.detach().clone(), free.scale.detach().clone())
        before = evaluate(q_amortized, "amortization_selection")[0]
        best = [before.clone(), free.loc.detach().clone(), free.scale.detach().clone()]
        best_step = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

        opt = torch.optim.Adam(free.params(), lr=lr)
        with forked_rng(x.device, stream_seed(seed, "amortization")):
            for step in track(range(1, steps + 1), steps, "per-datapoint inference", "step", progress):
                lw = log_weights(model, x, K, proposal=free.distribution())
                f = objective.encoder(lw.log_w)  # (N,)
                grads = torch.autograd.grad(f.sum(), free.params())  # the model's parameters get none
                for p, g in zip(free.params(), grads):
                    p.grad = -torch.where(torch.isfinite(g), g, torch.zeros_like(g))  # ascend; a bad draw skips
                opt.step()
                if step % check_every == 0 or step == steps:
                    bound = evaluate(free.distribution(), "amortization_selection")[0]
                    better = bound > best[0]  # NaN never wins
                    best[0] = torch.where(better, bound, best[0])
                    best[1] = torch.where(better[:, None], free.loc.detach(), best[1])
                    mask = better.view(-1, *[1] * (free.scale.dim() - 1))
                    best[2] = torch.where(mask, free.scale.detach(), best[2])
                    best_step = torch.where(better, torch.full_like(best_step, step), best_step)
        q_per_datapoint = free.distribution(best[1], best[2])
        after, lpx_after = evaluate(q_per_datapoint, "amortization_evaluation")
        report_before, lpx_before = evaluate(q_amortized, "amortization_evaluation")
    finally:
        model.train(was_training)

    exact = None
    if model.exact:
        with torch.no_grad():
            exact = model.log_marginal(x).double().cpu()
    return AmortizationResult(
        objective=objective.name, K=K, K_eval=K_eval, steps=steps, lr=lr, check_every=check_every, seed=seed,
        family=free.family, bound_amortized=report_before.cpu(), bound_per_datapoint=after.cpu(),
        log_px_amortized=lpx_before.cpu(), log_px_per_datapoint=lpx_after.cpu(), exact_log_px=exact,
        selection_gap=(best[0] - before).cpu(), best_step=best_step.cpu(), q_amortized=q_amortized,
        q_per_datapoint=q_per_datapoint)


# ---------------------------------------------------------------------------------------
# a trained run
# ---------------------------------------------------------------------------------------
@holds_run("amortize")
def amortize_run(run: str | Path, settings: AmortizeSettings = AmortizeSettings(),
                 device: torch.device | str | None = None, data_dir: str | None = None,
                 out: str | Path | None = None, progress: bool = True) -> dict:
    """Per-datapoint inference on the first ``settings.n_test`` test points (0 = all) of a
    trained run.

    Defaults: the run's objective (:func:`lvmbench.grid.amortization_objective`) and K, and
    K_eval = the smallest multiple of K that is >= 1000 (:func:`lvmbench.grid.amortization_sizes`). Writes the summary, with the settings it was
    computed with, to ``out`` (default RUN/amortization.json) and the per-point table next
    to it (``.csv``); returns the summary.
    """
    s = settings
    out = Path(out) if out else RunDir(run).file("amortization.json")
    diverged = RunDir(run).divergence()
    if diverged:
        summary = {"cell": RunDir(run).read_cell().id, "status": diverged, "settings": s.to_dict()}
        RunDir(run).write_json("amortization", summary, out)
        save_csv(pd.DataFrame(columns=["point"]), out.with_suffix(".csv"))
        return summary
    cell, data, model, _, _ = load_trained(run, device=device, data_dir=data_dir)
    obj = amortization_objective(cell, s)
    K, K_eval = amortization_sizes(cell, s)
    dev = next(model.parameters()).device
    x = data.observe(data.test[: s.n_test or None], stream(s.seed, "amortization_binarization")).to(dev)
    result = per_datapoint_inference(model, x, obj, K, steps=s.steps, lr=s.lr, K_eval=K_eval,
                                     check_every=s.check_every, seed=s.seed, max_samples=s.max_samples,
                                     progress=progress)
    summary = {"cell": cell.id, **result.summary(), "device": str(dev), "settings": s.to_dict()}
    RunDir(run).write_json("amortization", summary, out)
    save_csv(result.table(), out.with_suffix(".csv"))
    return summary
