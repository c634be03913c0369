"""Normalizing-flow posteriors: inverse autoregressive flow (IAF) on a Gaussian q0(z|x).

    u ~ q0(z|x) = N(mu(x), Sigma(x)),   z = f_L o ... o f_1(u),
    log q(z|x) = log q0(u) - sum_l log |det df_l/du_{l-1}|,   u = f^-1(z).

Each IAF layer (Kingma et al. 2016, "Improved variational inference with inverse
autoregressive flow", eqs. 10-15, the numerically stable "LSTM-type" update) is

    (m, s) = MADE(u, h),   sigma = sigmoid(s),   f(u) = sigma * u + (1 - sigma) * m,

where MADE (Germain et al. 2015) is an autoregressive network with masked linear
layers: m_i and s_i depend only on u_{<i} (in the layer's variable order) and on the
context h (features of x from the encoder trunk, or x itself). The Jacobian is
triangular with diagonal sigma, so log |det| = sum_i log sigmoid(s_i). Consecutive layers
reverse the variable order, as in Kingma et al.

Why IAF, not planar flows (Rezende & Mohamed 2015): the estimators ``stl`` and ``dreg``
evaluate log q(z|x) with phi stopped at a z that was *not* produced inside that call
(:meth:`LatentVariableModel.encoder_log_prob_stopped` builds a fresh distribution), and
``score`` and large-K evaluation score samples drawn without a path, so log_prob needs
f^-1(z). A planar map f(u) = u + a tanh(w.u + b) has no closed-form inverse (only a
1-D root find per point); IAF is exactly invertible by D sequential passes of its MADE:

    u^(0) = 0,   u^(j+1) = (z - (1 - sigma(u^(j))) * m(u^(j))) / sigma(u^(j)),

after pass j every coordinate whose autoregressive degree is <= j is exact, so u^(D) = f^-1(z)
exactly -- as a function of z, so autograd through the passes gives exact derivatives
(the masks make the dependence on u^(0) structurally zero). D passes are cheap for the
moderate latent sizes here (D = 50 for Burda's VAE). The MADE outputs of the last pass are
exact too (they depend only on u_{<i}), so log |det| comes for free.

Caching: torch's ``Transform`` cache (``cache_size=1``) would return the pre-image stored by
``sample()``, which is detached, so the score-function gradient d log q(z)/d phi would lose
its path through f_phi^-1(z). These transforms keep their own one-entry cache instead and
use it only when that is exact for gradients too: y was produced from x *with* a graph (the
``rsample`` -> ``log_prob`` path of the reparameterized estimators, where f^-1(f(u)) = u holds
for every phi), or nothing can be differentiated (no-grad evaluation, frozen parameters).
Otherwise the inverse is recomputed, so ``log_prob`` is correct on any value.

Options (a model's ``flow`` setting): ``{"type": "iaf", "layers": 2, "hidden": 64,
"context": True}``; ``hidden`` is the MADE's hidden width (an int, or a list for several
hidden layers); ``context=False`` makes the flow independent of x (only q0 is amortized).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, TransformedDistribution, constraints
from torch.distributions.transforms import Transform

#: the flow types a model's ``flow`` option accepts
FLOW_TYPES = ("iaf",)
#: initial bias of s, so sigma = sigmoid(s) starts near 1 (Kingma et al. 2016, section 4)
FORGET_BIAS = 2.0


class MaskedLinear(nn.Linear):
    """y = x (W * M)^T + b with a fixed 0/1 mask M (a buffer, not a parameter)."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor, gain: float = 1.0):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))
        nn.init.xavier_uniform_(self.weight, gain=gain)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015) giving the
    IAF shift and gate pre-activation: (m, s) = MADE(u, h), each (..., D), with m_i, s_i
    functions of u_j for degree(j) < degree(i) only (and of the context h).

    Degrees: input/output i gets ``order[i]`` (1..D, or D..1 when ``reverse``), hidden unit
    k gets 1 + k mod (D - 1) (0 when D = 1: such units see only the context). Masks:
    hidden k <- input j iff deg(k) >= deg(j); output i <- hidden k iff deg(i) > deg(k).
    """

    def __init__(self, dim: int, hidden: Sequence[int], context_dim: int = 0, reverse: bool = False):
        super().__init__()
        self.dim = dim
        order = torch.arange(dim, 0, -1) if reverse else torch.arange(1, dim + 1)
        self.register_buffer("order", order)
        degrees = [order]
        for h in hidden:
            degrees.append(torch.arange(h) % max(dim - 1, 1) + 1 if dim > 1 else torch.zeros(h, dtype=torch.long))
        layers = []
        for d_in, d_out in zip(degrees[:-1], degrees[1:]):
            layers.append(MaskedLinear(len(d_in), len(d_out), d_out[:, None] >= d_in[None, :]))
        self.hidden = nn.ModuleList(layers)
        out_degrees = order.repeat(2)  # m then s
        self.out = MaskedLinear(len(degrees[-1]), 2 * dim, out_degrees[:, None] > degrees[-1][None, :], gain=0.1)
        with torch.no_grad():
            self.out.bias[dim:] = FORGET_BIAS
        self.context = nn.Linear(context_dim, hidden[0], bias=False) if context_dim else None
        if self.context is not None:
            nn.init.xavier_uniform_(self.context.weight)

    def forward(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.hidden[0](u)
        if self.context is not None:
            h = h + self.context(context)  # (B, H) broadcasts over leading sample dims
        h = torch.tanh(h)
        for layer in self.hidden[1:]:
            h = torch.tanh(layer(h))
        m, s = self.out(h).chunk(2, dim=-1)
        return m, s


class IAFTransform(Transform):
    """One IAF step as a bijection of R^D (event dim 1):
    f(u) = sigma * u + (1 - sigma) * m, (m, s) = MADE(u, h), sigma = sigmoid(s);
    log |det J| = sum_i log sigmoid(s_i). The inverse takes D MADE passes (module docstring).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, made: MADE, context: Tensor | None = None):
        super().__init__(cache_size=0)  # caching is done below, gradient-safely
        self.made, self.context = made, context
        self._last: tuple[Tensor, Tensor, Tensor] | None = None  # (u, z, log|det|)

    def _gate(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m, s = self.made(u, self.context)
        return m, torch.sigmoid(s), F.logsigmoid(s).sum(-1)

    def _call(self, u: Tensor) -> Tensor:
        m, sigma, logdet = self._gate(u)
        z = sigma * u + (1 - sigma) * m
        self._last = (u, z, logdet)
        return z

    def _differentiable(self) -> bool:
        """Could a log-density through this transform carry gradients right now?"""
        if not torch.is_grad_enabled():
            return False
        if self.context is not None and self.context.requires_grad:
            return True
        return any(p.requires_grad for p in self.made.parameters())

    def _inverse(self, z: Tensor) -> Tensor:
        last = self._last
        if last is not None and z is last[1] and (z.requires_grad or not self._differentiable()):
            return last[0]
        u = torch.zeros_like(z)
        for _ in range(self.made.dim):
            m, sigma, logdet = self._gate(u)
            u = (z - (1 - sigma) * m) / sigma
        # the last pass's (m, sigma) depend only on coordinates that were already exact
        self._last = (u, z, logdet)
        return u

    def log_abs_det_jacobian(self, u: Tensor, z: Tensor) -> Tensor:
        last = self._last
        if last is not None and u is last[0] and z is last[1]:
            return last[2]
        return self._gate(u)[2]

    def with_cache(self, cache_size: int = 1) -> "IAFTransform":
        return self  # has its own gradient-safe cache


class IAF(nn.Module):
    """A stack of ``layers`` IAF steps with alternating variable order; calling it on a base
    q0 and a context h returns q = TransformedDistribution(q0, [f_1, ..., f_L])."""

    def __init__(self, dim: int, layers: int = 2, hidden: int | Sequence[int] = 64, context_dim: int = 0):
        super().__init__()
        hidden = [hidden] if isinstance(hidden, int) else list(hidden)
        self.dim, self.context_dim = dim, context_dim
        self.mades = nn.ModuleList(MADE(dim, hidden, context_dim, reverse=bool(l % 2)) for l in range(layers))

    def transforms(self, context: Tensor | None = None) -> list[IAFTransform]:
        ctx = context if self.context_dim else None
        return [IAFTransform(made, ctx) for made in self.mades]

    def forward(self, base: Distribution, context: Tensor | None = None) -> TransformedDistribution:
        return TransformedDistribution(base, self.transforms(context))


def build_flow(spec: dict | None, dim: int, context_dim: int) -> IAF | None:
    """The flow a model's ``flow`` option describes (None: no flow, a plain Gaussian q).

    ``context_dim`` is the size of the x-features the flow is conditioned on when
    ``spec["context"]`` is true (the default). Raises ValueError with one-line reasons.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ValueError("flow must be a mapping like {'type': 'iaf', 'layers': 2, 'hidden': 64} or null, "
                         f"got {spec!r}")
    allowed = {"type", "layers", "hidden", "context"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"flow: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    kind = spec.get("type", "iaf")
    if kind == "planar":
        raise ValueError("flow type 'planar' is not supported: it has no closed-form inverse, which "
                         "stl/dreg/score and evaluation need for log q(z|x) on given z; use 'iaf'")
    if kind not in FLOW_TYPES:
        raise ValueError(f"flow type must be one of {', '.join(FLOW_TYPES)}, got {kind!r}")
    layers, hidden, context = spec.get("layers", 2), spec.get("hidden", 64), spec.get("context", True)
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise ValueError(f"flow.layers must be an integer >= 1, got {layers!r}")
    sizes = [hidden] if isinstance(hidden, int) and not isinstance(hidden, bool) else hidden
    if (not isinstance(sizes, (list, tuple)) or not sizes
            or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in sizes)):
        raise ValueError(f"flow.hidden must be an integer >= 1 or a list of them, got {hidden!r}")
    if not isinstance(context, bool):
        raise ValueError(f"flow.context must be true or false, got {context!r}")
    return IAF(dim, layers, list(sizes), context_dim if context else 0)


__all__ = ["FLOW_TYPES", "IAF", "IAFTransform", "MADE", "MaskedLinear", "build_flow"]
