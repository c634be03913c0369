"""Score-function (likelihood-ratio) estimators: usable on any model, discrete latents included.

grad E_r[f(z)] = E_r[f(z) grad log r(z) + grad f(z)]   (Williams 1992; the lecture's estimator)

* ``score``          : the plain estimator, surrogate f + stop(f) sum_k log r(z_k)
* ``score_baseline`` : NVIL (Mnih & Gregor 2014): an input-dependent baseline b_psi(x)
                       subtracted from the learning signal, and variance normalisation
* ``vimco``          : VIMCO (Mnih & Rezende 2016): per-sample leave-one-out baselines
                       for the IWAE bound, K >= 2

The direct dependence of f on the parameters (through log w) is always kept, so the
estimators are unbiased for every objective they declare.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lvmbench.estimators.base import ENCODER_SAMPLED, Estimator, SurrogateParts
from lvmbench.models.base import LatentVariableModel, log_weights, mlp
from lvmbench.objectives import Objective
from lvmbench.stats import log_mean_exp


class Score(Estimator):
    """REINFORCE: surrogate f + stop(f) * sum_k log r(z_k), z drawn without a path.

    The proposal r is the encoder, or the prior for ``prior_mc`` (then the score term
    reaches theta, and phi gets no gradient).
    """

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        lw = log_weights(model, x, K, objective.proposal, rsample=False)
        f_enc = objective.encoder(lw.log_w)
        surrogate = (f_enc + f_enc.detach() * lw.log_rz.sum(0)).mean()
        if objective.shared(K):
            return SurrogateParts(surrogate, surrogate, f_enc.detach())
        f_dec = objective.decoder(lw.log_w)
        return SurrogateParts(f_dec.mean(), surrogate, f_dec.detach())


class ScoreBaseline(Estimator):
    """NVIL: learning signal (f - b_psi(x)) / max(1, s), s a running std of f - b_psi(x).

    The baseline network is trained alongside to minimise E[(f - b_psi(x))^2]. A baseline
    that depends on x only leaves the gradient unbiased; the normalisation divides the
    whole encoder surrogate by max(1, s), i.e. it adapts the encoder's step size and keeps
    the direction unbiased (exactly unbiased at fixed statistics, as in ``eval()`` mode).
    """

    objectives = ENCODER_SAMPLED

    def __init__(self, x_dim: int, hidden: int = 100, momentum: float = 0.9):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.net = mlp([x_dim, hidden, 1])
        self.momentum = momentum
        self.register_buffer("signal_var", torch.ones(()))

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        lw = log_weights(model, x, K, objective.proposal, rsample=False)
        f_enc = objective.encoder(lw.log_w)  # (B,)
        b = self.net(x).squeeze(-1)  # (B,)
        centred = (f_enc - b).detach()
        if self.training:
            self.signal_var.mul_(self.momentum).add_((1 - self.momentum) * centred.var(unbiased=False))
        scale = self.signal_var.sqrt().clamp_min(1.0)
        encoder = ((f_enc + centred * lw.log_rz.sum(0)) / scale).mean()
        f_dec = objective.decoder(lw.log_w)
        baseline = -((f_enc.detach() - b) ** 2).mean()
        return SurrogateParts(f_dec.mean(), encoder, f_dec.detach(), baseline)


class VIMCO(Estimator):
    """VIMCO: sample k's learning signal is L_K - L_K^{-k}, where L_K^{-k} replaces log w_k
    by the mean of the other K-1 log-weights (a geometric-mean stand-in)."""

    objectives = ("iwae",)
    min_K = 2

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        lw = log_weights(model, x, K, objective.proposal, rsample=False)
        log_w = lw.log_w  # (K, B)
        f = objective.encoder(log_w)  # (B,)
        others_mean = (log_w.sum(0, keepdim=True) - log_w) / (K - 1)  # (K, B)
        eye = torch.eye(K, dtype=torch.bool, device=x.device).unsqueeze(-1)  # (K, K, 1)
        loo = torch.where(eye, others_mean.unsqueeze(1), log_w.unsqueeze(0))  # (K, K, B): row k has w_k replaced
        L_minus = log_mean_exp(loo, dim=1)  # (K, B)
        signal = (f.unsqueeze(0) - L_minus).detach()
        surrogate = (f + (signal * lw.log_rz).sum(0)).mean()
        return SurrogateParts(surrogate, surrogate, f.detach())
