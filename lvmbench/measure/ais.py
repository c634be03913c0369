"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for log p(x).

AIS (Neal 2001, "Annealed importance sampling", Statistics and Computing 11) moves
samples from a tractable start r(z) to the posterior p(z|x) through the geometric path

    f_t(z) = r(z)^(1 - beta_t) p(x, z)^beta_t = r(z) w(z)^beta_t,   w(z) = p(x, z) / r(z),
    0 = beta_0 < beta_1 < ... < beta_T = 1,

with r the encoder q(z|x) (``start="encoder"``) or the prior p(z) (``start="prior"``, then
w = p(x|z)). A chain starts at z_0 ~ r; for t = 1..T it multiplies its weight by
f_t(z) / f_{t-1}(z) = w(z)^(beta_t - beta_{t-1}) at its current state, then moves by a
Markov transition that leaves f_t invariant (none after the last weight). Each chain's
weight W = prod_t w(z_{t-1})^(beta_t - beta_{t-1}) is an unbiased estimate of p(x), so

    log p_AIS(x) = log (1/C) sum_c W_c     (C chains)

is a stochastic lower bound on log p(x) (Jensen), tight as T grows. This is the protocol
of Wu, Burda, Salakhutdinov & Grosse (2017), "On the quantitative analysis of decoder-based
generative models" (ICLR): HMC transitions, a sigmoidal schedule, 16 chains.

Transitions: Hamiltonian Monte Carlo (Neal 2011, "MCMC using Hamiltonian dynamics") with an
identity mass matrix, ``leapfrog_steps`` leapfrog steps of size eps_t and a Metropolis
correction; log f_t and its gradient are (1 - beta) log r + beta log p(x, z) and the same
mix of the two gradients, so one evaluation per leapfrog step serves every temperature.

Step sizes, per test point and temperature: a *tuning pass* (``tune_chains`` chains of
their own random stream) anneals once, multiplying the point's step size after each
transition by exp(ADAPT_RATE * (acceptance - target_accept)), the acceptance being the
mean Metropolis acceptance probability over its chains; the estimation pass then uses
the step sizes it recorded. Adapting during the estimation pass itself would make each
transition depend on the chain's own past and bias the weights; step sizes fixed before
the estimation pass keep each W exactly unbiased.

Schedules (:func:`schedule`): ``sigmoid``, beta_t proportional to sigma(delta (2t/T - 1))
rescaled to [0, 1] with delta = 4 (Grosse et al. 2015; Wu et al. 2017), and ``geometric``,
beta_t = beta_1^((T - t)/(T - 1)) for t >= 1 (geometrically spaced from beta_1 = 1e-4).

BDMC (Grosse, Ghahramani & Adams 2015, "Sandwiching the marginal likelihood using
bidirectional Monte Carlo", arXiv 1511.02543; Grosse et al. 2016): on data simulated from
the model, (z*, x) ~ p(z) p(x|z), z* is an exact sample of p(z|x), i.e. of f_T. Running the
same chain backwards, beta from 1 to 0, started at z*, gives weights W' with
E[W'] = Z_0 / Z_T = 1 / p(x), so

    log p_rev(x) = -log (1/C) sum_c W'_c    >= log p(x) in expectation

is a stochastic upper bound; forward AIS on the same x is the lower bound. The width
upper - lower bounds the error of both on simulated data (their gap shrinks to 0 as T
grows). All reverse chains of a point start at its one z*; each W'_c is still unbiased for
1/p(x), so their mean is too.

Everything is batched: states are (C, B, D) for C chains of B points, so one test batch
anneals in one pass of tensor operations on any device. The model's parameters are
frozen (no gradient) while annealing; only z is differentiated.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor
from torch.distributions import Distribution

from lvmbench.errors import LvmbenchError
from lvmbench.models.base import LatentVariableModel, fast_distributions
from lvmbench.rng import forked_rng, stream_seed
from lvmbench.settings import AISSettings
from lvmbench.stats import log_mean_exp

#: the annealing schedules of :func:`schedule`
SCHEDULES = ("sigmoid", "geometric")
#: where the chains start: the encoder q(z|x) or the prior p(z)
STARTS = ("encoder", "prior")
#: steepness delta of the sigmoidal schedule (Grosse et al. 2015; Wu et al. 2017)
SIGMOID_DELTA = 4.0
#: beta_1 of the geometric schedule
GEOMETRIC_START = 1e-4
#: gain of the step-size adaptation: eps *= exp(ADAPT_RATE * (acceptance - target))
ADAPT_RATE = 1.0
#: step sizes stay within these bounds during tuning
STEP_SIZE_RANGE = (1e-4, 1.0)


def schedule(T: int, kind: str = "sigmoid") -> Tensor:
    """The inverse temperatures beta_0 = 0 < ... < beta_T = 1, (T + 1,) float64."""
    if T < 1:
        raise LvmbenchError(f"AIS needs at least 1 temperature, got {T}")
    if kind == "sigmoid":
        s = torch.sigmoid(SIGMOID_DELTA * (2 * torch.arange(T + 1, dtype=torch.float64) / T - 1))
        betas = (s - s[0]) / (s[-1] - s[0])
    elif kind == "geometric":
        exponent = torch.arange(T - 1, -1, -1, dtype=torch.float64) / max(T - 1, 1)  # (T,): 1 .. 0
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), GEOMETRIC_START ** exponent])
    else:
        raise LvmbenchError(f"unknown AIS schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")
    betas[0], betas[-1] = 0.0, 1.0
    return betas


@contextmanager
def frozen(model: LatentVariableModel) -> Iterator[None]:
    """The model in eval mode with no parameter tracking gradients (restored after), so
    autograd differentiates z only."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)


class AnnealingPath:
    """The geometric path f_beta(z) = r(z)^(1 - beta) p(x, z)^beta for a batch x (B, ...).

    :meth:`evaluate` returns log r(z), log p(x, z) and both gradients in z for states z
    shaped (C, B, D); log f_beta and its gradient follow for any beta by mixing them."""

    def __init__(self, model: LatentVariableModel, x: Tensor, start: str = "encoder"):
        if model.latent_kind != "continuous" or not model.reparameterizable:
            raise LvmbenchError(f"AIS with HMC needs continuous latents; {type(model).__name__} has "
                                f"{model.latent_kind} ones")
        if start not in STARTS:
            raise LvmbenchError(f"unknown AIS start {start!r}; choose one of: {', '.join(STARTS)}")
        self.model, self.x, self.start = model, x, start
        with torch.no_grad():
            self.r: Distribution = model.encoder(x) if start == "encoder" else model.prior()

    def sample_start(self, chains: int) -> Tensor:
        """z_0 ~ r, (C, B, D), from the global generator."""
        shape = (chains,) if self.r.batch_shape else (chains, self.x.shape[0])
        with torch.no_grad():
            return self.r.sample(shape)

    def evaluate(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log r(z), log p(x, z)) each (C, B), and their gradients in z, each (C, B, D)."""
        with torch.enable_grad():
            z_r, z_joint = z.detach().requires_grad_(True), z.detach().requires_grad_(True)  # one backward, two grads
            log_r = self.r.log_prob(z_r)
            log_joint = self.model.prior().log_prob(z_joint) + self.model.likelihood(z_joint).log_prob(self.x)
            g_r, g_joint = torch.autograd.grad(log_r.sum() + log_joint.sum(), (z_r, z_joint))
        return log_r.detach(), log_joint.detach(), g_r, g_joint


@dataclass
class Anneal:
    """One annealing run of C chains over B points: ``log_w`` (C, B) float64, the log of each
    chain's weight prod_t (f_t / f_{t-1})(z_{t-1}); ``acceptance`` (T - 1, B), the mean
    Metropolis acceptance probability of each transition; ``step_sizes`` (T + 1, B), the
    step size of the transition at each temperature (entries 0 and T are unused)."""

    log_w: Tensor
    acceptance: Tensor
    step_sizes: Tensor


def _mix(beta: float, a: Tensor, b: Tensor) -> Tensor:
    return (1 - beta) * a + beta * b


def hmc_transition(path: AnnealingPath, beta: float, z: Tensor, state: tuple[Tensor, ...], eps: Tensor,
                   leapfrog_steps: int) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
    """One HMC transition leaving f_beta invariant, for every chain and point at once.

    ``state`` is :meth:`AnnealingPath.evaluate` at z; ``eps`` (B,) the step size per point.
    Returns the new z, its state, and the acceptance probability min(1, exp(-dH)), (C, B)
    (NaN proposals are rejected)."""
    step = eps.to(z.dtype)[:, None]  # (B, 1): broadcasts over (C, B, D)
    p0 = torch.randn_like(z)
    log_f0 = _mix(beta, state[0], state[1])
    grad = _mix(beta, state[2], state[3])
    zn, p = z, p0 + 0.5 * step * grad
    for i in range(leapfrog_steps):
        zn = zn + step * p
        new = path.evaluate(zn)
        grad = _mix(beta, new[2], new[3])
        p = p + (step if i < leapfrog_steps - 1 else 0.5 * step) * grad
    log_f1 = _mix(beta, new[0], new[1])
    log_ratio = (log_f1 - 0.5 * (p ** 2).sum(-1)) - (log_f0 - 0.5 * (p0 ** 2).sum(-1))  # -dH, (C, B)
    log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
    accept = torch.rand_like(log_ratio).log() < log_ratio
    keep = accept[..., None]
    z = torch.where(keep, zn, z)
    state = tuple(torch.where(keep if s.dim() == 3 else accept, n, s) for s, n in zip(state, new))
    return z, state, log_ratio.clamp(max=0).exp()


def anneal(path: AnnealingPath, betas: Tensor, z: Tensor, leapfrog_steps: int, step_sizes: Tensor,
           target_accept: float | None = None) -> Anneal:
    """Run C chains from states z (C, B, D) along ``betas`` (increasing for AIS, decreasing
    for the reverse chain of BDMC), accumulating log f_t / f_{t-1} at each chain's state
    before the transition at beta_t (t = 1..T-1; none after the last weight).

    ``step_sizes`` is (T + 1, B), the step size at each temperature; with ``target_accept``
    it is instead (B,), the initial step sizes, adapted after each transition (the tuning
    pass of the module docstring) and recorded in the result."""
    T, B = betas.shape[0] - 1, z.shape[1]
    adapt = target_accept is not None
    eps = step_sizes.clone() if adapt else None
    used = torch.zeros(T + 1, B, dtype=torch.float64, device=z.device)
    acceptance = torch.zeros(max(T - 1, 0), B, dtype=torch.float64, device=z.device)
    log_w = torch.zeros(z.shape[:2], dtype=torch.float64, device=z.device)
    state = path.evaluate(z)
    for t in range(1, T + 1):
        log_w += (betas[t] - betas[t - 1]).item() * (state[1] - state[0]).double()  # (beta_t - beta_t-1) log w(z)
        if t == T:
            break
        used[t] = eps if adapt else step_sizes[t]
        z, state, a = hmc_transition(path, betas[t].item(), z, state, used[t], leapfrog_steps)
        acceptance[t - 1] = a.double().mean(0)
        if adapt:
            eps = (eps * torch.exp(ADAPT_RATE * (acceptance[t - 1] - target_accept))).clamp(*STEP_SIZE_RANGE)
    return Anneal(log_w, acceptance, used)


# ---------------------------------------------------------------------------------------
# log p(x) by AIS, and the BDMC sandwich
# ---------------------------------------------------------------------------------------
@dataclass
class AISEstimate:
    """Per point (tensors (B,) float64, on the CPU): the AIS log p(x) estimate (a stochastic
    lower bound), the BDMC upper bound where the chains were also run backwards (None
    otherwise), the mean acceptance probability of the estimation pass, and its step sizes
    (T + 1, B)."""

    log_px: Tensor
    upper: Tensor | None
    acceptance: Tensor
    step_sizes: Tensor


def _tuned(path: AnnealingPath, betas: Tensor, s: AISSettings, seed: int) -> Tensor:
    """Step sizes (T + 1, B) from a tuning pass on the global generator seeded ``seed``
    (module docstring)."""
    B = path.x.shape[0]
    with forked_rng(path.x.device, seed):
        z = path.sample_start(s.tune_chains)
        eps = torch.full((B,), s.step_size, dtype=torch.float64, device=path.x.device)
        return anneal(path, betas, z, s.leapfrog_steps, eps, s.target_accept).step_sizes


def ais_batch(model: LatentVariableModel, x: Tensor, s: AISSettings, seed: int, batch: int = 0,
              z_exact: Tensor | None = None) -> AISEstimate:
    """AIS log p(x) for one batch x (B, ...) with the settings ``s``; with ``z_exact`` (B, D),
    exact posterior samples of x (simulated data), also the reverse chains of BDMC.

    Streams (lvmbench.rng, from ``seed``, sub-stream ``batch``): ``ais_tuning`` for the tuning
    pass, ``ais`` for the forward chains, ``ais_reverse`` for the reverse ones."""
    betas = schedule(s.temperatures, s.schedule)
    with frozen(model), fast_distributions():
        path = AnnealingPath(model, x, s.start)
        step_sizes = _tuned(path, betas, s, stream_seed(seed, "ais_tuning", batch))
        with forked_rng(x.device, stream_seed(seed, "ais", batch)):
            forward = anneal(path, betas, path.sample_start(s.chains), s.leapfrog_steps, step_sizes)
        upper = None
        if z_exact is not None:
            with forked_rng(x.device, stream_seed(seed, "ais_reverse", batch)):
                z = z_exact.detach().unsqueeze(0).expand(s.chains, *z_exact.shape).clone()
                reverse = anneal(path, betas.flip(0), z, s.leapfrog_steps, step_sizes.flip(0))
            upper = -log_mean_exp(reverse.log_w, 0).cpu()
    mean_accept = forward.acceptance.mean(0) if forward.acceptance.numel() else torch.ones_like(forward.log_w[0])
    return AISEstimate(log_mean_exp(forward.log_w, 0).cpu(), upper, mean_accept.cpu(), step_sizes.cpu())


def ais_log_px(model: LatentVariableModel, x: Tensor, s: AISSettings, seed: int,
               z_exact: Tensor | None = None) -> AISEstimate:
    """:func:`ais_batch` over x in batches of ``s.batch_size`` points (batch i on sub-streams
    i), concatenated; deterministic given ``seed``."""
    parts = [ais_batch(model, x[start:start + s.batch_size], s, seed, i,
                       None if z_exact is None else z_exact[start:start + s.batch_size])
             for i, start in enumerate(range(0, x.shape[0], s.batch_size))]
    return AISEstimate(torch.cat([p.log_px for p in parts]),
                       None if z_exact is None else torch.cat([p.upper for p in parts]),
                       torch.cat([p.acceptance for p in parts]), torch.cat([p.step_sizes for p in parts], 1))


__all__ = ["ADAPT_RATE", "AISEstimate", "Anneal", "AnnealingPath", "SCHEDULES", "STARTS", "ais_batch", "ais_log_px",
           "anneal", "frozen", "hmc_transition", "schedule"]
