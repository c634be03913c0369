"""Gradient estimators as named surrogate parts for the decoder (theta) and encoder (phi).

An estimator turns a model, an objective and a minibatch into two scalar surrogates:
the gradient of ``decoder`` with respect to theta is the decoder-gradient estimate and
the gradient of ``encoder`` with respect to phi is the encoder-gradient estimate
(the surrogate-loss trick; STL and DReG change only the encoder part, as in the
reference DReG code). :func:`gradients` evaluates both.

* ``reparam`` : pathwise, z = g_phi(eps)                       (Kingma & Welling 2014)
* ``score``   : likelihood ratio / REINFORCE,
                grad E_q[f] = E_q[f grad log q(z) + grad f]       (Williams 1992)
* ``stl``     : sticking the landing, log q's parameters stopped (Roeder et al. 2017)
* ``dreg``    : doubly reparameterized, sum_k w~_k^2 dlog w_k/dz_k dz_k/dphi
                                                                 (Tucker et al. 2018)
* ``exact``   : autograd through the exact log p(x) (objective ``exact`` only); the
                encoder follows the exact posterior by minimising KL(p(z|x) || q(z|x)).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from torch.distributions import kl_divergence

from lvmbench.models.base import LatentVariableModel, LogWeights, log_weights
from lvmbench.objectives import Objective
from lvmbench.registry import Registry

SAMPLED = ("elbo", "iwae", "miwae", "ciwae", "piwae", "prior_mc")
ENCODER_SAMPLED = ("elbo", "iwae", "miwae", "ciwae", "piwae")


class SurrogateParts(NamedTuple):
    """d decoder / d theta and d encoder / d phi are the gradient estimates; ``bound`` is
    the objective's value per data point (B,), detached, for reporting."""

    decoder: Tensor
    encoder: Tensor
    bound: Tensor


def _stopped_log_w(model: LatentVariableModel, x: Tensor, lw: LogWeights) -> Tensor:
    """log w with log q's parameters stopped, z still a function of phi: (K, B)."""
    return lw.log_pz + lw.log_px_z - model.encoder_log_prob_stopped(x, lw.z)


def reparam(model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
    """Pathwise gradient of the objective through reparameterized samples."""
    lw = log_weights(model, x, K, objective.proposal, rsample=True)
    f_dec = objective.decoder(lw.log_w)
    decoder = f_dec.mean()
    encoder = decoder if objective.shared(K) else objective.encoder(lw.log_w).mean()
    return SurrogateParts(decoder, encoder, f_dec.detach())


def score(model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
    """REINFORCE: surrogate f + stop(f) * sum_k log r(z_k), z drawn without a path.

    The proposal r is the encoder, or the prior for ``prior_mc`` (then the score term
    reaches theta, and phi gets no gradient). The direct dependence of f on the
    parameters (through log w) is kept, so this is unbiased for every objective and K.
    """
    lw = log_weights(model, x, K, objective.proposal, rsample=False)
    f_enc = objective.encoder(lw.log_w)
    surrogate = (f_enc + f_enc.detach() * lw.log_rz.sum(0)).mean()
    if objective.shared(K):
        return SurrogateParts(surrogate, surrogate, f_enc.detach())
    f_dec = objective.decoder(lw.log_w)
    return SurrogateParts(f_dec.mean(), surrogate, f_dec.detach())


def stl(model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
    """Sticking the landing: the encoder ascends the objective of stop-phi log-weights."""
    lw = log_weights(model, x, K, objective.proposal, rsample=True)
    f_dec = objective.decoder(lw.log_w)
    f_enc = objective.encoder(_stopped_log_w(model, x, lw))
    return SurrogateParts(f_dec.mean(), f_enc.mean(), f_dec.detach())


def dreg(model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
    """DReG: per group of an encoder term, surrogate sum_k stop(w~_k^2) log w_k(stop phi).

    For the IWAE term (one group) this is Tucker et al.'s eq. 7; ELBO terms (groups of
    one sample) reduce to STL, which is unbiased there.
    """
    lw = log_weights(model, x, K, objective.proposal, rsample=True)
    log_w, log_w_stl = lw.log_w, _stopped_log_w(model, x, lw)
    f_enc = 0.0
    for M, weight in objective.encoder_terms(K):
        groups = log_w.detach().reshape(M, K // M, -1)
        w_tilde = torch.softmax(groups, dim=1)  # (M, K/M, B)
        f_enc = f_enc + weight * (w_tilde ** 2 * log_w_stl.reshape(M, K // M, -1)).sum(1).mean(0)
    f_dec = objective.decoder(log_w)
    return SurrogateParts(f_dec.mean(), f_enc.mean(), f_dec.detach())


def exact(model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
    """Exact gradient of log p(x); the encoder minimises KL(p(z|x) || q(z|x))."""
    log_px = model.log_marginal(x)
    kl = kl_divergence(model.posterior(x), model.encoder(x))
    return SurrogateParts(log_px.mean(), -kl.mean(), log_px.detach())


def stl_bias(objective: Objective, K: int) -> str | None:
    """STL drops a score term whose expectation is zero only for groups of one sample."""
    if any(K // M > 1 for M, _ in objective.encoder_terms(K)):
        return f"STL is biased for {objective.name} with K={K} > 1 samples per group (Tucker et al. 2018)"
    return None


ESTIMATORS = Registry("estimator")
ESTIMATORS.register("reparam", requires_rsample=True, objectives=SAMPLED, min_K=1, max_K=None,
                    bias=None)(reparam)
ESTIMATORS.register("score", requires_rsample=False, objectives=SAMPLED, min_K=1, max_K=None,
                    bias=None)(score)
ESTIMATORS.register("stl", requires_rsample=True, objectives=ENCODER_SAMPLED, min_K=1, max_K=None,
                    bias=stl_bias)(stl)
ESTIMATORS.register("dreg", requires_rsample=True, objectives=ENCODER_SAMPLED, min_K=1, max_K=None,
                    bias=None)(dreg)
ESTIMATORS.register("exact", requires_rsample=False, objectives=("exact",), min_K=1, max_K=1,
                    bias=None)(exact)


def bias_reason(estimator: str, objective: Objective, K: int) -> str | None:
    """Why the estimator is biased for this objective and K, or None if it is unbiased."""
    bias = ESTIMATORS[estimator].caps["bias"]
    return bias(objective, K) if bias else None


def gradients(parts: SurrogateParts, theta: Sequence[Tensor], phi: Sequence[Tensor],
              create_graph: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    """(d decoder / d theta, d encoder / d phi); parameters a part does not reach get zeros."""

    def grad(out: Tensor, params: Sequence[Tensor], retain: bool) -> list[Tensor]:
        if not params or not out.requires_grad:
            return [torch.zeros_like(p) for p in params]
        g = torch.autograd.grad(out, params, retain_graph=retain, allow_unused=True, create_graph=create_graph)
        return [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]

    if parts.decoder is parts.encoder:  # one backward pass serves both groups
        g = grad(parts.decoder, [*theta, *phi], retain=create_graph)
        return g[: len(theta)], g[len(theta):]
    g_theta = grad(parts.decoder, theta, retain=True)
    return g_theta, grad(parts.encoder, phi, retain=create_graph)
