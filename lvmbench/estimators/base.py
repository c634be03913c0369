"""The one estimator interface, its surrogate parts, and their gradients.

Every gradient estimator is an :class:`Estimator`: an ``nn.Module`` whose ``forward(model,
objective, x, K)`` returns :class:`SurrogateParts`. Stateless estimators simply have no
parameters; stateful ones (NVIL's baseline network, an annealed temperature) keep theirs,
and the trainer optimises them alongside the model. What an estimator needs, and when it
is biased, is declared on its class.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from lvmbench.models.base import LatentVariableModel, LogWeights
from lvmbench.objectives import Objective

#: every sampled objective, and those that use the encoder as proposal
SAMPLED = ("elbo", "iwae", "miwae", "ciwae", "piwae", "prior_mc")
ENCODER_SAMPLED = ("elbo", "iwae", "miwae", "ciwae", "piwae")


class SurrogateParts(NamedTuple):
    """d decoder / d theta and d encoder / d phi are the gradient estimates; ``bound`` is
    the objective's value per data point (B,), detached, for reporting. ``baseline`` is a
    scalar the estimator's own parameters (e.g. NVIL's baseline network) ascend, or None."""

    decoder: Tensor
    encoder: Tensor
    bound: Tensor
    baseline: Tensor | None = None


class Estimator(nn.Module):
    """A gradient estimator: ``forward(model, objective, x, K) -> SurrogateParts``.

    Declarations, read by the registry and the planner:

    * ``requires_rsample``: needs reparameterizable latents (pathwise gradients);
    * ``needs_model``: model capabilities of which it needs at least one (e.g. ``relaxable``);
    * ``objectives``: the objectives it supports;
    * ``min_K`` / ``max_K``: the range of K it runs with (``max_K`` None: no upper limit);
    * :meth:`bias`: why it is biased for an objective and K, or None; its docstring says when.

    Options are the constructor's keyword arguments; ``x_dim`` is passed only to
    constructors that take it.
    """

    requires_rsample: ClassVar[bool] = False
    needs_model: ClassVar[tuple[str, ...]] = ()
    objectives: ClassVar[tuple[str, ...]] = SAMPLED
    min_K: ClassVar[int] = 1
    max_K: ClassVar[int | None] = None

    @classmethod
    def bias(cls, objective: Objective, K: int) -> str | None:
        """unbiased for every objective it supports"""
        return None

    def forward(self, model: LatentVariableModel, objective: Objective, x: Tensor, K: int) -> SurrogateParts:
        raise NotImplementedError


def stopped_log_w(model: LatentVariableModel, x: Tensor, lw: LogWeights) -> Tensor:
    """log w with log q's parameters stopped, z still a function of phi: (K, B)."""
    return lw.log_pz + lw.log_px_z - model.encoder_log_prob_stopped(x, lw.z)


def grad_or_zeros(out: Tensor | None, params: Sequence[Tensor], retain: bool = True,
                  create_graph: bool = False) -> list[Tensor]:
    """d out / d params, with zeros for parameters ``out`` does not reach (or all zeros when
    ``out`` is None or constant)."""
    if not params or out is None or not out.requires_grad:
        return [torch.zeros_like(p) for p in params]
    g = torch.autograd.grad(out, params, retain_graph=retain, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]


def gradients(parts: SurrogateParts, theta: Sequence[Tensor], phi: Sequence[Tensor],
              create_graph: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    """(d decoder / d theta, d encoder / d phi); parameters a part does not reach get zeros.

    When both parts are the same tensor one backward pass serves both groups.
    """
    keep = create_graph or parts.baseline is not None
    if parts.decoder is parts.encoder:
        g = grad_or_zeros(parts.decoder, [*theta, *phi], retain=keep, create_graph=create_graph)
        return g[: len(theta)], g[len(theta):]
    g_theta = grad_or_zeros(parts.decoder, theta, retain=True, create_graph=create_graph)
    return g_theta, grad_or_zeros(parts.encoder, phi, retain=keep, create_graph=create_graph)


def baseline_gradients(parts: SurrogateParts, psi: Sequence[Tensor]) -> list[Tensor]:
    """d baseline / d psi for the estimator's own parameters (zeros when it has none)."""
    return grad_or_zeros(parts.baseline, psi, retain=False)
