"""Test log-likelihood by large-K importance sampling, the bound curve, and bound-ordering checks.

log p(x) >= L_K = E[log (1/K) sum_k w_k], and L_K increases to log p(x) as K grows
(Burda et al. 2016, theorem 1). Test log p(x) is estimated with L_{K_eval}
(K_eval = 5000 by default), streamed over chunks of samples so memory does not grow
with K_eval, with max-subtracted log-sum-exp throughout.

From the same K_eval samples, L_k for every k dividing K_eval is estimated without
bias by averaging log-mean-exp over the K_eval / k disjoint groups of k samples; this
uses every sample, unlike the first k alone. A cell is evaluated with the proposal it was
trained with (:func:`trained_proposal`): the encoder, or the prior for the lecture's naive
Monte Carlo (``prior_mc``), so that its ESS is that of its estimator.

Where the config's ``ais`` block selects the cell, annealed importance sampling
(:mod:`lvmbench.measure.ais`) estimates log p(x) on the first test points too, and with
``bdmc_points`` the BDMC sandwich is computed on data simulated from the model,
(z, x) ~ p. Each inequality that holds in expectation is checked by a paired z-test
(:func:`bound_ordering`): L_1 <= ... <= L_K_eval <= [log p(x)] <= [BDMC upper], and AIS
below log p(x) and below the BDMC upper bound. AIS against L_K_eval is reported (the AIS
gain), never checked: both are stochastic lower bounds, and neither must be the tighter.

Random streams (lvmbench.rng, from the eval seed): ``evaluation_binarization`` binarizes
the test set once (importance sampling and AIS see the same binary images),
``evaluation`` draws the importance samples; the simulated data come from the
``simulation`` stream's own sub-streams (its ``sampling``, ``evaluation`` and AIS streams).
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lvmbench.errors import LvmbenchError
from lvmbench.measure.ais import ais_log_px
from lvmbench.models.base import LatentVariableModel, fast_distributions, log_weights, proposal_distribution
from lvmbench.objectives import make_objective
from lvmbench.progress import track
from lvmbench.rng import forked_rng, stream, stream_seed
from lvmbench.runs import RunDir, holds_run, load_trained
from lvmbench.settings import AISSettings, Cell, EvalSettings
from lvmbench.stats import log_mean_exp, mean_se


#: samples x test points per pass of the model on a CPU (:func:`sample_passes`); measured on
#: Burda's VAE at L_5000 (docs/performance.md): 1.4x the points/s of one pass per chunk
CPU_PASS_ROWS = 2048


def chunk_size(K_eval: int, k_grid: list[int], max_chunk: int) -> int:
    """Largest divisor c of K_eval with c <= max_chunk such that every k in the grid
    divides c or is a multiple of c (so each group lies in one chunk or spans whole chunks)."""
    for c in range(min(K_eval, max_chunk), 0, -1):
        if K_eval % c == 0 and all(c % k == 0 or k % c == 0 for k in k_grid):
            return c
    return 1


class StreamingGroupedLME:
    """Streaming estimate of G_k = mean over groups of k samples of log-mean-exp, per data point.

    Feed log-weight chunks shaped (c, B) in order. Groups within a chunk are reduced at
    once; a group spanning several chunks keeps a running log-sum-exp (torch.logaddexp,
    which is max-subtracted) until it is complete.
    """

    def __init__(self, k: int, B: int, device: torch.device):
        self.k = k
        self.total = torch.zeros(B, dtype=torch.float64, device=device)  # sum over finished groups
        self.groups = 0
        self.partial = torch.full((B,), -math.inf, dtype=torch.float64, device=device)
        self.filled = 0

    def update(self, log_w: Tensor) -> None:
        c = log_w.shape[0]
        log_w = log_w.double()
        if c % self.k == 0:  # whole groups in this chunk
            lme = log_mean_exp(log_w.reshape(c // self.k, self.k, -1), dim=1)
            self.total += lme.sum(0)
            self.groups += c // self.k
            return
        self.partial = torch.logaddexp(self.partial, log_w.logsumexp(0))
        self.filled += c
        if self.filled == self.k:
            self.total += self.partial - math.log(self.k)
            self.groups += 1
            self.partial.fill_(-math.inf)
            self.filled = 0

    def value(self) -> Tensor:
        return self.total / self.groups  # (B,)


@dataclass
class PointEstimates:
    """Per-test-point results: ``bounds`` (N, len(k_grid)) L_k estimates, ``ess`` (N,) the
    effective sample size of the K_eval weights, ``log_px`` (N,) exact log p(x) or None."""

    k_grid: list[int]
    bounds: np.ndarray
    ess: np.ndarray
    log_px: np.ndarray | None


@contextmanager
def full_fp32() -> Iterator[None]:
    """Full fp32 matrix products on CUDA (no TF32) while evaluating log-likelihoods."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def sample_passes(c: int, B: int, device: torch.device) -> list[int]:
    """How a chunk of c samples for B points is drawn: in one pass on a GPU; on a CPU in
    passes of at most :data:`CPU_PASS_ROWS` samples x points, so that each pass's
    activations stay in cache between the layers (a VAE's 784 logits of 2048 rows are 6 MB)."""
    if device.type != "cpu":
        return [c]
    s = max(1, CPU_PASS_ROWS // B)
    return [s] * (c // s) + ([c % s] if c % s else [])


def _batch_bounds(model: LatentVariableModel, xb: Tensor, K_eval: int, k_grid: list[int],
                  c: int, proposal: str) -> tuple[Tensor, Tensor]:
    """L_k estimates (B, len(k_grid)) and ESS (B,) for one batch, in chunks of c samples."""
    acc = [StreamingGroupedLME(k, xb.shape[0], xb.device) for k in k_grid]
    lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=xb.device)
    lse2 = lse.clone()
    q = proposal_distribution(model, proposal, xb)  # computed once per batch
    passes = sample_passes(c, xb.shape[0], xb.device)
    for _ in range(K_eval // c):
        log_w = torch.cat([log_weights(model, xb, s, proposal=q, rsample=False).log_w for s in passes])  # (c, B)
        for a in acc:
            a.update(log_w)
        lse = torch.logaddexp(lse, log_w.double().logsumexp(0))
        lse2 = torch.logaddexp(lse2, (2 * log_w.double()).logsumexp(0))
    return torch.stack([a.value() for a in acc], 1).cpu(), (2 * lse - lse2).exp().cpu()  # ESS = (sum w)^2 / sum w^2


@torch.no_grad()
def estimate_bounds(model: LatentVariableModel, x: Tensor, K_eval: int = 5000,
                    k_grid: list[int] | None = None, batch_size: int = 100,
                    max_samples: int = 200_000, observe: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                    seed: int = 0, progress: bool = True, proposal: str = "encoder") -> PointEstimates:
    """L_k for every k in ``k_grid`` (divisors of K_eval; K_eval is always included) on every
    test point, with ``batch_size`` points per pass and chunks of at most
    ``max_samples / batch_size`` samples. Seeded: the same seed gives the same numbers; the
    samples come from the ``evaluation`` stream of ``seed``. ``observe`` is the dataset's
    policy for what the model sees (``Dataset.observe``: for dynamically binarized data a
    fresh binarization of each test batch, as in Burda et al.), drawn from the
    ``evaluation_binarization`` stream; None shows ``x`` as it is. ``proposal`` is the
    importance distribution: the encoder, or the prior (the lecture's naive Monte Carlo,
    :func:`lvmbench.models.base.proposal_distribution`). A chunk that runs out of
    GPU memory is retried with half as many samples (the estimate stays valid; its random
    numbers then differ from an uninterrupted run)."""
    k_grid = sorted(set(k_grid or []) | {K_eval})
    bad = [k for k in k_grid if k < 1 or K_eval % k]
    if bad:
        raise LvmbenchError(f"every k in the bound curve must divide K_eval={K_eval}; these do not: {bad}")
    c = chunk_size(K_eval, k_grid, max(1, max_samples // batch_size))
    gen = stream(seed, "evaluation_binarization", x.device)
    was_training = model.training
    model.eval()
    bounds, ess, exact = [], [], []
    with forked_rng(x.device, stream_seed(seed, "evaluation")), fast_distributions(), full_fp32():
        for start in track(range(0, x.shape[0], batch_size), -(-x.shape[0] // batch_size), "evaluate", "batch", progress):
            xb = x[start:start + batch_size]
            if observe is not None:
                xb = observe(xb, gen)
            while True:
                try:
                    b, e = _batch_bounds(model, xb, K_eval, k_grid, c, proposal)
                    break
                except torch.OutOfMemoryError:
                    if c == 1:
                        raise LvmbenchError(f"out of memory even with one sample per chunk at batch size "
                                            f"{xb.shape[0]}; lower eval.batch_size") from None
                    c = chunk_size(K_eval, k_grid, c // 2)
                    if x.device.type == "cuda":
                        torch.cuda.empty_cache()
                    print(f"[lvmbench] evaluation ran out of memory; retrying with chunks of {c} samples",
                          file=sys.stderr)
            bounds.append(b)
            ess.append(e)
            if model.exact:
                exact.append(model.log_marginal(xb).double().cpu())
    model.train(was_training)
    return PointEstimates(k_grid, torch.cat(bounds).numpy(), torch.cat(ess).numpy(),
                          torch.cat(exact).numpy() if exact else None)


def paired_check(lower_name: str, lower: np.ndarray, upper_name: str, upper: np.ndarray,
                 threshold: float = 3.0) -> dict:
    """Is ``lower`` <= ``upper``? A paired z-test on the per-point differences d = upper - lower
    over their common (first) points: z = mean(d) / se(d); the check fails when
    z < -threshold, i.e. the value that should be lower is significantly higher."""
    n = min(len(lower), len(upper))
    mean, se = mean_se(upper[:n] - lower[:n])
    z = mean / se if se > 0 else (0.0 if mean >= -1e-9 else -math.inf)
    return {"lower": lower_name, "upper": upper_name, "mean_diff": mean, "se": se, "z": z, "n": n,
            "passed": bool(z >= -threshold)}


#: what the top of an ordering chain is, by its name: the reference the checks used
REFERENCE_KINDS = {"exact log p(x)": "exact", "BDMC upper": "bdmc_upper"}


def bound_ordering(est: PointEstimates, threshold: float = 3.0, ais: np.ndarray | None = None,
                   upper: np.ndarray | None = None) -> pd.DataFrame:
    """Check L_1 <= ... <= L_K_eval [<= exact log p(x)] [<= BDMC upper], and AIS <= each of
    exact log p(x) and the BDMC upper bound that is given.

    Every consecutive pair of the chain is checked, and every lower member against its top,
    the *reference*: the BDMC upper bound where given (simulated data), else exact log p(x),
    else the largest-K estimate itself (``largest_k``: a circular check, since L_K_eval is
    then only compared with smaller k). AIS is a stochastic lower bound like every L_k, so it
    is checked only against the values above log p(x)'s lower bounds, never against L_K_eval
    (which of the two is tighter depends on the AIS budget). ``ais`` and ``upper`` may cover
    only the first points; each check uses the points both sides have
    (:func:`paired_check`). Returns one row per check, with the ``reference`` kind."""
    chain = [(f"L_{k}", est.bounds[:, i]) for i, k in enumerate(est.k_grid)]
    chain += [(name, v) for name, v in (("exact log p(x)", est.log_px), ("BDMC upper", upper)) if v is not None]
    top_name = chain[-1][0]
    kind = REFERENCE_KINDS.get(top_name, "largest_k")
    pairs = list(zip(chain[:-1], chain[1:])) + [(low, chain[-1]) for low in chain[:-2]]
    if ais is not None:
        pairs += [(("AIS", ais), above) for above in chain if above[0] in REFERENCE_KINDS]
    rows = [paired_check(a, va, b, vb, threshold) for (a, va), (b, vb) in pairs]
    return pd.DataFrame(rows).assign(reference=kind, reference_name=top_name)


@torch.no_grad()
def active_units(model: LatentVariableModel, x: Tensor, threshold: float = 1e-2, samples: int = 100,
                 seed: int = 0) -> list[int]:
    """Burda et al.'s active units per stochastic layer: unit u is active if
    Cov_x(E_q[u | x]) > threshold. E_q[u | x] is the encoder mean where the distribution
    has one, else a Monte Carlo mean of ``samples`` draws (hierarchical encoders).
    Discrete (index-valued) latents have no units: the result is empty."""
    with forked_rng(x.device, seed):
        q = model.encoder(x)
        if not q.event_shape:
            return []
        try:
            mean = q.mean
        except NotImplementedError:
            mean = q.sample((samples,)).mean(0)
    active = mean.var(0) > threshold  # (sum of latent sizes,)
    return [int(a.sum()) for a in active.split(list(model.latent_sizes))]


def summarize(est: PointEstimates, threshold: float = 3.0, ais: np.ndarray | None = None) -> dict:
    """JSON-ready summary: log p(x) estimate with its SE, the bound curve, exact log p(x),
    ESS and the ordering check (with the AIS estimates of the first points, if given)."""
    log_px, log_px_se = mean_se(est.bounds[:, -1])
    curve = [{"k": k, "mean": m, "se": s} for k, (m, s) in
             zip(est.k_grid, (mean_se(est.bounds[:, i]) for i in range(len(est.k_grid))))]
    order = bound_ordering(est, threshold, ais).assign(data="test")
    exact = mean_se(est.log_px) if est.log_px is not None else (None, None)
    return {
        "K_eval": est.k_grid[-1], "n_test": int(est.bounds.shape[0]),
        "log_px": log_px, "log_px_se": log_px_se,
        "exact_log_px": exact[0], "exact_log_px_se": exact[1],
        "ess_mean": float(est.ess.mean()),
        "bound_curve": curve,
        "ordering_reference": order.reference.iloc[0],
        **_ordering_verdict(order, threshold),
    }


def _ordering_verdict(order: pd.DataFrame, threshold: float) -> dict:
    worst = order.loc[order.z.idxmin()]
    return {"ordering_passed": bool(order.passed.all()), "ordering_worst_z": float(worst.z),
            "ordering_worst": f"{worst.lower} <= {worst.upper}" + (f" ({worst.data})" if worst.data != "test" else ""),
            "ordering_checks": order.to_dict("records"), "ordering_threshold": threshold}


def ais_summary(est: PointEstimates, ais: np.ndarray, acceptance: np.ndarray, settings: AISSettings) -> dict:
    """AIS log p(x) on its points beside L_K_eval on the same points: the gain AIS - L_K_eval
    (paired) with its SE; the mean HMC acceptance; the settings."""
    n = len(ais)
    log_px, log_px_se = mean_se(ais)
    gain, gain_se = mean_se(ais - est.bounds[:n, -1])
    return {"n_points": n, "log_px": log_px, "log_px_se": log_px_se,
            "L_K_eval": float(est.bounds[:n, -1].mean()), "gain": gain, "gain_se": gain_se,
            "acceptance": float(acceptance.mean()), "settings": settings.to_dict()}


def bdmc_summary(est: PointEstimates, lower: np.ndarray, upper: np.ndarray,
                 threshold: float) -> tuple[dict, pd.DataFrame]:
    """The BDMC sandwich on simulated data: forward AIS (lower) and reverse AIS (upper) means
    with SEs, the width upper - lower (paired) with its SE, L_K_eval and exact log p(x) on
    the same points; and the ordering checks of the chain up to the upper bound."""
    order = bound_ordering(est, threshold, lower, upper).assign(data="simulated")
    (lo, lo_se), (up, up_se), (width, width_se) = mean_se(lower), mean_se(upper), mean_se(upper - lower)
    out = {"n_points": len(lower), "lower": lo, "lower_se": lo_se, "upper": up, "upper_se": up_se,
           "width": width, "width_se": width_se, "L_K_eval": float(est.bounds[:, -1].mean()),
           "exact_log_px": float(est.log_px.mean()) if est.log_px is not None else None}
    return out, order


def trained_proposal(cell: Cell) -> str:
    """The proposal a cell is evaluated with: the one its objective trained with (the prior
    for ``prior_mc``, else the encoder), so that its ESS and bound curve are its estimator's;
    a prior_mc cell's encoder was never trained."""
    return make_objective(cell.objective_name, **cell.objective_options).proposal


@holds_run("evaluate")
def evaluate_run(run: str | Path, settings: EvalSettings = EvalSettings(), device: torch.device | str | None = None,
                 data_dir: str | None = None, out: str | Path | None = None, progress: bool = True,
                 ais: AISSettings | None = None) -> dict:
    """Evaluate a trained run with ``settings`` and write ``eval.json`` (or ``out``), which
    records the settings; returns the result. With ``ais``, AIS log p(x) on the first
    ``ais.n_test`` evaluated points and, with ``ais.bdmc_points``, the BDMC sandwich on that
    many points simulated from the model; their results and settings go into ``ais`` and
    ``bdmc``, and their checks into the ordering. A run whose training diverged is not
    evaluated: its result says so."""
    out = Path(out) if out else RunDir(run).file("eval.json")
    diverged = RunDir(run).divergence()
    if diverged:
        result = {"cell": RunDir(run).read_cell().id, "status": diverged, "settings": settings.to_dict()}
        RunDir(run).write_json("eval", result, out)
        return result
    trained = load_trained(run, device=device, data_dir=data_dir)
    model, data, s = trained.model, trained.data, settings
    proposal = trained_proposal(trained.cell)
    device = next(model.parameters()).device
    x_test = data.observe(data.test[: s.n_test or None], stream(s.seed, "evaluation_binarization")).to(device)
    est = estimate_bounds(model, x_test, s.K_eval, list(s.k_grid), s.batch_size, s.max_samples,
                          seed=s.seed, progress=progress, proposal=proposal)
    result = {"cell": trained.cell.id, "device": str(device), "settings": s.to_dict(), "proposal": proposal,
              "active_units": active_units(model, data.train[: s.active_units_n].to(device), seed=s.seed)}
    if ais is None:
        result.update(summarize(est, s.ordering_threshold))
    else:
        n = min(ais.n_test or x_test.shape[0], x_test.shape[0])
        a = ais_log_px(model, x_test[:n], ais, s.seed)
        result.update(summarize(est, s.ordering_threshold, a.log_px.numpy()),
                      ais=ais_summary(est, a.log_px.numpy(), a.acceptance.numpy(), ais))
        if ais.bdmc_points:
            root = stream_seed(s.seed, "simulation")
            with forked_rng(device, stream_seed(root, "sampling")):
                z_sim, x_sim = model.sample(ais.bdmc_points)
            est_sim = estimate_bounds(model, x_sim, s.K_eval, list(s.k_grid), s.batch_size, s.max_samples,
                                      seed=root, progress=progress, proposal=proposal)
            b = ais_log_px(model, x_sim, ais, root, z_exact=z_sim)
            result["bdmc"], sim_order = bdmc_summary(est_sim, b.log_px.numpy(), b.upper.numpy(),
                                                     s.ordering_threshold)
            test_order = pd.DataFrame(result["ordering_checks"])
            result.update(_ordering_verdict(pd.concat([test_order, sim_order], ignore_index=True),
                                            s.ordering_threshold),
                          ordering_simulated_reference=sim_order.reference.iloc[0])
    RunDir(run).write_json("eval", result, out)
    return result
