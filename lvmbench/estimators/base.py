"""Surrogate parts and their gradients, shared by every estimator."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from lvmbench.models.base import LatentVariableModel, LogWeights


class SurrogateParts(NamedTuple):
    """d decoder / d theta and d encoder / d phi are the gradient estimates; ``bound`` is
    the objective's value per data point (B,), detached, for reporting. ``baseline`` is a
    scalar the estimator's own parameters (e.g. NVIL's baseline network) ascend, or None."""

    decoder: Tensor
    encoder: Tensor
    bound: Tensor
    baseline: Tensor | None = None


def stopped_log_w(model: LatentVariableModel, x: Tensor, lw: LogWeights) -> Tensor:
    """log w with log q's parameters stopped, z still a function of phi: (K, B)."""
    return lw.log_pz + lw.log_px_z - model.encoder_log_prob_stopped(x, lw.z)


def _grad(out: Tensor | None, params: Sequence[Tensor], retain: bool, create_graph: bool) -> list[Tensor]:
    if not params or out is None or not out.requires_grad:
        return [torch.zeros_like(p) for p in params]
    g = torch.autograd.grad(out, params, retain_graph=retain, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]


def gradients(parts: SurrogateParts, theta: Sequence[Tensor], phi: Sequence[Tensor],
              create_graph: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    """(d decoder / d theta, d encoder / d phi); parameters a part does not reach get zeros.

    When both parts are the same tensor one backward pass serves both groups.
    """
    if parts.decoder is parts.encoder:
        g = _grad(parts.decoder, [*theta, *phi], retain=create_graph or parts.baseline is not None,
                  create_graph=create_graph)
        return g[: len(theta)], g[len(theta):]
    g_theta = _grad(parts.decoder, theta, retain=True, create_graph=create_graph)
    return g_theta, _grad(parts.encoder, phi, retain=create_graph or parts.baseline is not None,
                          create_graph=create_graph)


def baseline_gradients(parts: SurrogateParts, psi: Sequence[Tensor]) -> list[Tensor]:
    """d baseline / d psi for the estimator's own parameters (zeros when it has none)."""
    return _grad(parts.baseline, psi, retain=False, create_graph=False)
