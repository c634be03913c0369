"""Exact expected bounds, as differentiable functions of every parameter.

A sampled objective is a random variable f(log w_1, ..., log w_K) with z_k ~ r iid, r
the proposal (the encoder q_phi(z|x), or the prior for ``prior_mc``). Its expectation

    F(theta, phi; x) = E_{z_1..K ~ r}[ f(log w(z_1), ..., log w(z_K)) ],
    log w(z) = log p_theta(z) + log p_theta(x|z) - log r(z),

is what an unbiased gradient estimator targets: grad F. This module computes F without
sampling where the model allows it, written so that autograd through F gives the
exact gradients (:func:`exact_gradients`), the reference the estimator tests compare to.

Reduction to single IWAE bounds
-------------------------------
Every sampled objective is a weighted sum of grouped terms (see
:mod:`lvmbench.objectives`), f = sum_i a_i G_{M_i}, and G_M averages M IWAE bounds of
K/M *independent* samples each, so by linearity of expectation

    E[f] = sum_i a_i E[L_{K/M_i}],    L_k = log (1/k) sum_{j<=k} w_j.

Each E[L_k] is then computed by the first method that applies:

1. closed form: k = 1 (the ELBO), encoder proposal, model with a working ``exact_elbo``
   (the linear-Gaussian model without a flow encoder);
2. enumeration: a discrete proposal with ``enumerate_support`` (or a model listing its
   ``latent_states()``) and C**k <= 200,000:
       E[L_k] = sum_{c in [C]^k} prod_j r(c_j|x) L_k(log w(c_1), ..., log w(c_k)),
   the probabilities r(c|x) carrying the gradient to the proposal's parameters;
3. Gauss-Hermite quadrature: a 1-D Gaussian proposal N(m, s^2), k <= 4, n nodes t_i
   with weights v_i (n**k <= 2e6):
       E[L_k] ~= sum_{i_1..i_k} prod_j (v_{i_j} / sqrt(pi)) L_k(log w(z_{i_1}), ...),
       z_i = m + s sqrt(2) t_i,
   the nodes reparameterized, so the gradient reaches m and s through z. The rule is
   exact for polynomials of degree < 2n in each z_j, so for k = 1 on a linear-Gaussian
   model (log w quadratic in z) it is exact; for k > 1 the log-sum-exp is smooth but
   not polynomial and the error falls only algebraically in n (about 4e-6 at n = 48,
   k = 2 on the tests' 1-D model, 1e-6 at n = 64): far below Monte Carlo errors, but
   not float64 rounding. Pass ``nodes`` for more accuracy.

The objective ``exact`` is log p(x) itself for the decoder, and -KL(p(z|x) || q(z|x))
for the encoder, as in the ``exact`` estimator.

``decompose=False`` instead evaluates the objective's own function on the joint grid
of all K samples (enumeration and quadrature only): slower (C**K instead of C**(K/M)
points), but an independent check of the decomposition and of the objectives' code.

Memory
------
A grid expectation gathers (k, N, B) log-weights for N grid rows and a batch of B points.
Without autograd, :func:`_grid_expectation` bounds that by taking at most
``_CHUNK_ELEMENTS / B`` rows at a time. Under autograd every chunk's intermediates are kept
for the backward pass, so the whole grid x batch would be held at once (K=4 quadrature,
37**4 rows, on a batch of 2000 points needs terabytes); :func:`exact_gradients` therefore
splits the batch into chunks of at most ``_GRAD_ELEMENTS / (grid rows per point)`` points
and accumulates their gradients, which is exact since the bound is a mean over points.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from lvmbench.estimators.base import grad_or_zeros
from lvmbench.models.base import LatentVariableModel, posterior_kl, proposal_distribution
from lvmbench.objectives import Objective
from lvmbench.stats import log_mean_exp

#: the most joint assignments enumerated for one expectation
MAX_ENUMERATION = 200_000
#: the most quadrature grid points for one expectation
MAX_QUADRATURE = 2_000_000
#: the largest number of samples integrated by tensor-product quadrature
MAX_QUADRATURE_K = 4
#: grid rows x batch points gathered at once by a grid expectation (bounds memory without autograd)
_CHUNK_ELEMENTS = 2 ** 20
#: grid rows x batch points differentiated at once by :func:`exact_gradients` (bounds autograd's memory)
_GRAD_ELEMENTS = 2 ** 22


# ---------------------------------------------------------------------------------------
# proposals
# ---------------------------------------------------------------------------------------
def _gaussian_1d(r: Distribution) -> tuple[Tensor, Tensor, tuple[int, ...]] | None:
    """(mean, std, event_shape) of a Gaussian over a single real number, else None."""
    if isinstance(r, MultivariateNormal) and r.event_shape == (1,):
        return r.loc[..., 0], r.scale_tril[..., 0, 0], (1,)
    if isinstance(r, Independent) and isinstance(r.base_dist, Normal) and r.event_shape == (1,):
        return r.base_dist.loc[..., 0], r.base_dist.scale[..., 0], (1,)
    if isinstance(r, Normal) and r.event_shape == ():
        return r.loc, r.scale, ()
    return None


def _support(model: LatentVariableModel, r: Distribution, B: int) -> Tensor | None:
    """Every value a discrete proposal can take, (C, B, *event), or None.

    From ``r.enumerate_support`` (e.g. a Categorical with batch () or (B,)), else from the
    model's ``latent_states()`` when it declares them enumerable (``model.exact``; the
    tiny sigmoid belief nets and categorical VAEs), for proposals over that space.
    """
    if tuple(r.batch_shape) not in ((), (B,)):
        return None
    if getattr(r, "has_enumerate_support", False):
        z = r.enumerate_support(expand=True)  # (C,) + batch + event
        if r.batch_shape == ():
            z = z.unsqueeze(1).expand(z.shape[0], B, *z.shape[1:])
        return z
    if hasattr(model, "latent_states") and getattr(model, "exact", False) and not r.has_rsample:
        states = model.latent_states()  # (S, *event)
        if tuple(states.shape[1:]) != tuple(r.event_shape):
            return None
        return states.unsqueeze(1).expand(states.shape[0], B, *states.shape[1:])
    return None


def _n_enumerable(model: LatentVariableModel, r: Distribution, B: int) -> int | None:
    """Number of values of a discrete proposal (see :func:`_support`), else None."""
    z = _support(model, r, B)
    return None if z is None else int(z.shape[0])


def _quadrature_nodes(K: int, nodes: int | None) -> int:
    """Nodes per dimension: 48 while 48**K <= 2e6, fewer for larger K."""
    if nodes is not None:
        return nodes
    return min(48, int(math.floor(MAX_QUADRATURE ** (1.0 / K) + 1e-9)))


def _has_closed_form_elbo(model: LatentVariableModel, x: Tensor) -> bool:
    """True when ``model.exact_elbo`` exists and applies (a flow encoder refuses it)."""
    if not hasattr(model, "exact_elbo"):
        return False
    try:
        with torch.no_grad():
            model.exact_elbo(x[:1])
    except NotImplementedError:
        return False
    return True


def _method(model: LatentVariableModel, objective: Objective, r: Distribution | None, k: int, B: int,
            closed_form: bool = False) -> str | None:
    """The exact method for E[L_k] under proposal r: 'closed_form', 'enumeration',
    'quadrature' or None. ``closed_form``: the model's exact_elbo applies."""
    if k == 1 and objective.proposal == "encoder" and closed_form:
        return "closed_form"
    if r is None:
        return None
    C = _n_enumerable(model, r, B)
    if C is not None:
        return "enumeration" if C ** k <= MAX_ENUMERATION else None
    if _gaussian_1d(r) is not None and tuple(r.batch_shape) in ((), (B,)) and k <= MAX_QUADRATURE_K:
        return "quadrature"
    return None


# ---------------------------------------------------------------------------------------
# per-node log-weights
# ---------------------------------------------------------------------------------------
def _node_log_weights(model: LatentVariableModel, x: Tensor, r: Distribution,
                      method: str, nodes: int) -> tuple[Tensor, Tensor]:
    """For every node (support value or quadrature point) v: log w(v) and the log of
    its probability mass under r, both (n, B)."""
    B = x.shape[0]
    if method == "enumeration":
        z = _support(model, r, B)
        if z.is_floating_point():
            z = z.to(x.dtype)
        log_mass = r.log_prob(z)  # (C, B) with gradient to r's parameters
    else:  # quadrature
        loc, scale, event = _gaussian_1d(r)
        t, v = np.polynomial.hermite.hermgauss(nodes)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        log_v = torch.as_tensor(np.log(v) - 0.5 * math.log(math.pi), dtype=x.dtype, device=x.device)
        loc, scale = loc.expand(B), scale.expand(B)
        z = loc + math.sqrt(2.0) * scale * t.unsqueeze(1)  # (n, B), reparameterized
        z = z.reshape(nodes, B, *event)
        log_mass = log_v.unsqueeze(1).expand(nodes, B)
    log_w = model.prior().log_prob(z) + model.likelihood(z).log_prob(x) - r.log_prob(z)
    return log_w, log_mass


def _grid_expectation(log_w: Tensor, log_mass: Tensor, k: int, f: Callable[[Tensor], Tensor]) -> Tensor:
    """sum over all n**k index tuples c of prod_j mass[c_j] * f(log_w[c_1], ..., log_w[c_k]).

    ``f`` maps (k, N) log-weights to (N,). Built without Python loops over tuples: the
    index grid (k, N) gathers (k, N, B) log-weights, reshaped to (k, N*B) for ``f``; at most
    ``_CHUNK_ELEMENTS / B`` rows at a time.
    """
    n, B = log_w.shape
    total = n ** k
    rows = max(1, _CHUNK_ELEMENTS // B)
    out = log_w.new_zeros(B)
    for start in range(0, total, rows):
        flat = torch.arange(start, min(start + rows, total), device=log_w.device)
        idx = torch.stack([(flat // n ** (k - 1 - j)) % n for j in range(k)])  # (k, N)
        lw = log_w[idx]  # (k, N, B)
        lm = log_mass[idx].sum(0)  # (N, B)
        vals = f(lw.reshape(k, -1)).reshape(lw.shape[1], B)
        out = out + (lm.exp() * vals).sum(0)
    return out


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------
def _terms(objective: Objective, K: int, part: str) -> list[tuple[int, float]]:
    """The objective's terms as [(k = samples per group, weight)], zero weights dropped
    and equal group sizes merged."""
    raw = objective.decoder_terms(K) if part == "decoder" else objective.encoder_terms(K)
    merged: dict[int, float] = {}
    for M, weight in raw:
        if weight != 0:
            merged[K // M] = merged.get(K // M, 0.0) + weight
    return sorted(merged.items())


def exact_method(model: LatentVariableModel, objective: Objective, x: Tensor, K: int,
                 part: str = "decoder", decompose: bool = True) -> str | None:
    """Which method :func:`expected_bound` uses ('exact', 'closed_form', 'enumeration',
    'quadrature', 'mixed' when terms use different ones), or None when none applies."""
    if part not in ("decoder", "encoder"):
        raise ValueError(f"part must be 'decoder' or 'encoder', got {part!r}")
    if not objective.sampled:
        return "exact" if getattr(model, "exact", False) else None
    if objective.why_invalid(K) is not None:
        return None
    with torch.no_grad():
        r = proposal_distribution(model, objective.proposal, x)
    B = x.shape[0]
    if not decompose:
        m = _method(model, objective, r, 2, B)  # a grid method, never the closed form
        if m is None:
            return None
        if m == "enumeration":
            return m if _n_enumerable(model, r, B) ** K <= MAX_ENUMERATION else None
        return m if K <= MAX_QUADRATURE_K else None
    closed = _has_closed_form_elbo(model, x)
    methods = {_method(model, objective, r, k, B, closed) for k, _ in _terms(objective, K, part)}
    if None in methods:
        return None
    return methods.pop() if len(methods) == 1 else "mixed"


def expected_bound(model: LatentVariableModel, objective: Objective, x: Tensor, K: int,
                   part: str = "decoder", nodes: int | None = None,
                   decompose: bool = True) -> Tensor | None:
    """E_{z_1..K ~ r}[objective.<part>(log w)] per data point, (B,), or None.

    Differentiable in every parameter of ``model`` (theta and phi), so autograd gives
    the exact gradient of the expected bound. ``part`` is 'decoder' or 'encoder' (they
    differ for piwae). ``nodes`` overrides the Gauss-Hermite node count per dimension.
    Returns None when no exact method applies (e.g. a VAE, a multi-dimensional
    Gaussian latent with k > 1, or too many joint assignments).
    """
    method = exact_method(model, objective, x, K, part, decompose)
    if method is None:
        return None
    if method == "exact":
        if part == "decoder":
            return model.log_marginal(x)
        return -posterior_kl(model, x)

    r = proposal_distribution(model, objective.proposal, x)
    B = x.shape[0]
    if not decompose:
        f = objective.decoder if part == "decoder" else objective.encoder
        n = _quadrature_nodes(K, nodes) if method == "quadrature" else None
        log_w, log_mass = _node_log_weights(model, x, r, method, n)
        return _grid_expectation(log_w, log_mass, K, f)

    total = x.new_zeros(B)
    cache: dict[int, tuple[Tensor, Tensor]] = {}
    closed = _has_closed_form_elbo(model, x)
    for k, weight in _terms(objective, K, part):
        m = _method(model, objective, r, k, B, closed)
        if m == "closed_form":
            value = model.exact_elbo(x)
        else:
            n = _quadrature_nodes(k, nodes) if m == "quadrature" else None
            key = n or 0
            if key not in cache:
                cache[key] = _node_log_weights(model, x, r, m, n)
            value = _grid_expectation(*cache[key], k, log_mean_exp)
        total = total + weight * value
    return total


def _grid_rows(model: LatentVariableModel, objective: Objective, x: Tensor, K: int, part: str,
               nodes: int | None) -> int:
    """The most grid rows one data point needs in :func:`expected_bound` (decomposed): C**k
    for enumeration, n**k for quadrature, 1 for the closed forms."""
    if not objective.sampled:
        return 1
    with torch.no_grad():
        r = proposal_distribution(model, objective.proposal, x)
    closed, B = _has_closed_form_elbo(model, x), x.shape[0]
    rows = 1
    for k, _ in _terms(objective, K, part):
        m = _method(model, objective, r, k, B, closed)
        if m == "enumeration":
            rows = max(rows, _n_enumerable(model, r, B) ** k)
        elif m == "quadrature":
            rows = max(rows, _quadrature_nodes(k, nodes) ** k)
    return rows


def exact_gradients(model: LatentVariableModel, objective: Objective, x: Tensor, K: int,
                    nodes: int | None = None) -> tuple[list[Tensor], list[Tensor]] | None:
    """(theta grads, phi grads) of the exact expected bound averaged over the batch:
    d/dtheta mean_b E[decoder part], d/dphi mean_b E[encoder part], matching the
    estimators' ``.mean()`` surrogates; None when no exact method applies.

    The batch is differentiated in chunks of at most ``_GRAD_ELEMENTS / (grid rows per
    point)`` points whose gradients are summed (module docstring, Memory), so memory stays
    bounded for any batch size."""
    if any(exact_method(model, objective, x, K, part) is None for part in ("decoder", "encoder")):
        return None
    theta, phi = model.decoder_parameters(), model.encoder_parameters()
    B = x.shape[0]
    step = max(1, _GRAD_ELEMENTS // max(_grid_rows(model, objective, x, K, part, nodes)
                                        for part in ("decoder", "encoder")))
    g_theta, g_phi = [torch.zeros_like(p) for p in theta], [torch.zeros_like(p) for p in phi]
    for start in range(0, B, step):
        xc = x[start:start + step]
        dec = expected_bound(model, objective, xc, K, "decoder", nodes)
        enc = expected_bound(model, objective, xc, K, "encoder", nodes)
        for acc, g in (*zip(g_theta, grad_or_zeros(dec.sum() / B, theta)),
                       *zip(g_phi, grad_or_zeros(enc.sum() / B, phi, retain=False))):
            acc += g
        del dec, enc  # this chunk's graph goes before the next one is built
    return g_theta, g_phi


__all__ = ["expected_bound", "exact_gradients", "exact_method", "MAX_ENUMERATION", "MAX_QUADRATURE"]
