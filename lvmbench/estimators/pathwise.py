"""Pathwise estimators, and the exact gradient for tractable models.

* ``reparam`` : pathwise, z = g_phi(eps)                          (Kingma & Welling 2014)
* ``stl``     : sticking the landing, log q's parameters stopped   (Roeder et al. 2017)
* ``dreg``    : doubly reparameterized, sum_k w~_k^2 dlog w_k/dz_k dz_k/dphi
                                                                   (Tucker et al. 2018)
* ``exact``   : autograd through the exact log p(x) (objective ``exact`` only); the
                encoder follows the exact posterior by minimising KL(p(z|x) || q(z|x)).

STL and DReG change only the encoder's part, as in the reference DReG code: the decoder
surrogate is the objective of the log-weights; STL's encoder surrogate is the same
objective of the stop-phi log-weights, DReG's weights each group's stop-phi log-weights
by w~^2 instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lvmbench.estimators.base import ENCODER_SAMPLED, Estimator, SurrogateParts, stopped_log_w
from lvmbench.models.base import LatentVariableModel, log_weights, posterior_kl
from lvmbench.objectives import Objective


class Reparam(Estimator):
    """Pathwise gradient of the objective through reparameterized samples."""

    requires_rsample = True

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        lw = log_weights(model, x, K, objective.proposal, rsample=True)
        f_dec = objective.decoder(lw.log_w)
        decoder = f_dec.mean()
        encoder = decoder if objective.shared(K) else objective.encoder(lw.log_w).mean()
        return SurrogateParts(decoder, encoder, f_dec.detach())


class STL(Estimator):
    """Sticking the landing: the encoder ascends the objective of stop-phi log-weights."""

    requires_rsample = True
    objectives = ENCODER_SAMPLED

    @classmethod
    def bias(cls, objective: Objective, K: int) -> str | None:
        """biased (encoder) when a group holds > 1 sample (iwae K > 1); iwae K=10, 20-D toy: mean 6x the unbiased one

        In words: the dropped score term has zero mean only for groups of one sample (Tucker
        et al. 2018). Measured on Rainforth et al.'s 20-D toy at its optimum plus N(0, 0.01^2)
        noise, iwae K=10, 32 points: STL's mean encoder gradient is about 6x as long as the
        unbiased (reparam) one and off it by about 5x that length (gradvar's relative_bias;
        tests/test_estimators.py). The decoder gradient is reparam's, unbiased.
        """
        if any(K // M > 1 for M, _ in objective.encoder_terms(K)):
            return (f"STL's encoder gradient is biased for {objective.name} with K={K} > 1 samples per group "
                    f"(Tucker et al. 2018); its size: gradvar's relative_bias")
        return None

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        lw = log_weights(model, x, K, objective.proposal, rsample=True)
        f_dec = objective.decoder(lw.log_w)
        f_enc = objective.encoder(stopped_log_w(model, x, lw))
        return SurrogateParts(f_dec.mean(), f_enc.mean(), f_dec.detach())


class DReG(Estimator):
    """DReG: per group of an encoder term, surrogate sum_k stop(w~_k^2) log w_k(stop phi).

    For the IWAE term (one group) this is Tucker et al.'s eq. 7; ELBO terms (groups of
    one sample) reduce to STL, which is unbiased there.
    """

    requires_rsample = True
    objectives = ENCODER_SAMPLED

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        lw = log_weights(model, x, K, objective.proposal, rsample=True)
        log_w, log_w_stl = lw.log_w, stopped_log_w(model, x, lw)
        f_enc = 0.0
        for M, weight in objective.encoder_terms(K):
            groups = log_w.detach().reshape(M, K // M, -1)
            w_tilde = torch.softmax(groups, dim=1)  # (M, K/M, B)
            f_enc = f_enc + weight * (w_tilde ** 2 * log_w_stl.reshape(M, K // M, -1)).sum(1).mean(0)
        f_dec = objective.decoder(log_w)
        return SurrogateParts(f_dec.mean(), f_enc.mean(), f_dec.detach())


class ExactGradient(Estimator):
    """Exact gradient of log p(x); the encoder minimises KL(p(z|x) || q(z|x))."""

    objectives = ("exact",)
    max_K = 1

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        log_px = model.log_marginal(x)
        return SurrogateParts(log_px.mean(), -posterior_kl(model, x).mean(), log_px.detach())
