"""Relaxed and straight-through estimators for discrete latents.

* ``gumbel``           : Concrete / Gumbel-softmax (Maddison et al. 2017; Jang et al. 2017).
  The decoder sees the relaxed sample z~ = softmax((logits + g) / tau); log p(z) and log q(z|x)
  are taken at the hard sample through a straight-through path. Biased for any tau > 0.
* ``straight_through`` : forward pass with the hard sample, backward through the relaxed one
  (Bengio et al. 2013; "ST Gumbel-softmax" in Jang et al.). For VQ-VAE, the model's own
  straight-through from z_q to z_e plus the codebook and beta-commitment losses
  (van den Oord et al. 2017). Biased.

The bound these report (and that evaluation estimates at large K) is always the one of the
discrete model, evaluated at hard samples, never the relaxed objective that is optimised.
The temperature anneals as tau = max(min_temperature, temperature * exp(-anneal_rate * step))
(Jang et al.: tau = max(0.5, exp(-1e-5 t))).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lvmbench.estimators.base import ENCODER_SAMPLED, Estimator, SurrogateParts
from lvmbench.models.base import LatentVariableModel
from lvmbench.objectives import Objective


class Relaxed(Estimator):
    """Common part: the annealed temperature and the relaxed / straight-through samples."""

    needs_model = ("relaxable",)
    objectives = ENCODER_SAMPLED
    hard_decoder_input = False

    def __init__(self, temperature: float = 1.0, anneal_rate: float = 0.0, min_temperature: float = 0.5):
        super().__init__()
        if temperature <= 0 or min_temperature <= 0 or anneal_rate < 0:
            raise ValueError("temperature and min_temperature must be > 0 and anneal_rate >= 0")
        self.temperature, self.anneal_rate, self.min_temperature = temperature, anneal_rate, min_temperature
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def tau(self) -> Tensor:
        """max(min_temperature, temperature * exp(-anneal_rate * step)), as a tensor (so that it
        follows the step buffer inside a batched, compiled step)."""
        return (self.temperature * torch.exp(-self.anneal_rate * self.step.double())).clamp_min(self.min_temperature)

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        if self.training:
            self.step.add_(1)
        z_soft, z_st = model.relaxed_rsample(x, K, self.tau)
        log_pz, log_qz = model.prior().log_prob(z_st), model.encoder(x).log_prob(z_st)  # (K, B)
        log_w = log_pz + model.likelihood(z_st if self.hard_decoder_input else z_soft).log_prob(x) - log_qz
        f = objective.decoder(log_w)
        if self.hard_decoder_input:
            bound = f.detach()
        else:
            with torch.no_grad():
                bound = objective.decoder(log_pz + model.likelihood(z_st).log_prob(x) - log_qz)
        decoder = f.mean()
        encoder = decoder if objective.shared(K) else objective.encoder(log_w).mean()
        return SurrogateParts(decoder, encoder, bound)


class Gumbel(Relaxed):
    """Concrete / Gumbel-softmax: the decoder sees the relaxed sample (biased)."""

    @classmethod
    def bias(cls, objective: Objective, K: int) -> str | None:
        """biased for any temperature > 0 (the Concrete relaxation)"""
        return "the Concrete relaxation is biased for any temperature > 0"


class StraightThrough(Relaxed):
    """Straight-through: hard sample forward, relaxed gradient backward; VQ-VAE's own ST (biased)."""

    needs_model = ("relaxable", "straight_through")
    objectives = ("elbo", "iwae")
    hard_decoder_input = True

    @classmethod
    def bias(cls, objective: Objective, K: int) -> str | None:
        """always biased"""
        return "straight-through gradients are biased"

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        if not model.straight_through:
            return super().forward(model, objective, x, K)
        log_w, codebook, commitment = model.straight_through_parts(x)
        f = objective.decoder(log_w)  # (B,)
        return SurrogateParts((f - codebook).mean(), (f - model.beta * commitment).mean(), f.detach())
