"""Linear-Gaussian latent variable model, including Rainforth et al.'s (2018) 20-D toy.

    p(z) = N(mu, I),   p(x | z) = N(W z + c, sigma^2 I),   q(z | x) = N(A x + b, L L^T)

Everything is Gaussian, so log p(x) = log N(x; W mu + c, W W^T + sigma^2 I), the
posterior N(S (mu + W^T (x - c) / sigma^2), S) with S = (I + W^T W / sigma^2)^-1, and the
ELBO have closed forms. The posterior mean is affine in x and its covariance does not
depend on x, so the encoder family contains the exact posterior.

With ``decoder="identity"`` (W = I, c = 0, sigma = 1, only mu learned) and a fixed
``q_scale = sqrt(2/3)`` this is Rainforth et al.'s toy: x ~ N(mu, 2I), optimum
A = I/2, b = mu/2.

``flow={"type": "iaf", ...}`` pushes q through an inverse autoregressive flow conditioned
on x (:mod:`lvmbench.models.flow`); q is then no longer Gaussian, so the closed-form
``exact_elbo`` and ``set_encoder_to_posterior`` refuse (NotImplementedError).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, constraints, transform_to

from lvmbench.models.base import LatentVariableModel
from lvmbench.models.flow import build_flow


class _AffineGaussianEncoder(nn.Module):
    """q(z|x) = N(A x + b, L L^T); L learned (lower Cholesky) or fixed."""

    def __init__(self, x_dim: int, z_dim: int, q_scale: float | None):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(z_dim, x_dim))
        self.b = nn.Parameter(torch.zeros(z_dim))
        self._to_tril = transform_to(constraints.lower_cholesky)
        raw = self._to_tril.inv(torch.eye(z_dim) * (q_scale or 1.0))
        self.scale_raw = nn.Parameter(raw, requires_grad=q_scale is None)

    @property
    def scale_tril(self) -> Tensor:
        return self._to_tril(self.scale_raw)


class LinearGaussian(LatentVariableModel):
    """Continuous z with a linear-Gaussian decoder; exact log p(x), posterior and ELBO."""

    latent_kind = "continuous"
    data = ("continuous",)
    reparameterizable = True
    exact = True

    def __init__(self, x_dim: int, z_dim: int | None = None, decoder: str = "identity",
                 q_scale: float | None = math.sqrt(2 / 3), flow: dict | None = None):
        super().__init__()
        z_dim = z_dim or x_dim
        if decoder == "identity" and z_dim != x_dim:
            raise ValueError("decoder='identity' needs z_dim == x_dim")
        if decoder not in ("identity", "linear"):
            raise ValueError(f"decoder must be 'identity' or 'linear', got {decoder!r}")
        if q_scale is not None and not q_scale > 0:
            raise ValueError(f"q_scale must be > 0 or null (learned), got {q_scale!r}")
        self.latent_sizes = (z_dim,)
        learn = decoder == "linear"
        self.mu = nn.Parameter(torch.zeros(z_dim))
        self.W = nn.Parameter(torch.eye(x_dim, z_dim) if not learn else torch.randn(x_dim, z_dim) / math.sqrt(z_dim),
                              requires_grad=learn)
        self.c = nn.Parameter(torch.zeros(x_dim), requires_grad=learn)
        self.log_sigma = nn.Parameter(torch.zeros(()), requires_grad=learn)
        self.encoder_net = _AffineGaussianEncoder(x_dim, z_dim, q_scale)
        self.encoder_net.flow = build_flow(flow, z_dim, context_dim=x_dim)  # None: plain Gaussian q

    def init_from_data(self, x_train: Tensor) -> None:
        with torch.no_grad():
            if not self.W.requires_grad:
                self.mu.copy_(x_train.mean(0))

    def prior(self) -> Independent:
        return Independent(Normal(self.mu, torch.ones_like(self.mu)), 1)

    def likelihood(self, z: Tensor) -> Independent:
        loc = z @ self.W.T + self.c
        return Independent(Normal(loc, self.log_sigma.exp().expand_as(loc)), 1)

    def encoder(self, x: Tensor) -> Distribution:
        e = self.encoder_net
        q = MultivariateNormal(x @ e.A.T + e.b, scale_tril=e.scale_tril)
        return q if e.flow is None else e.flow(q, x)

    def _refuse_flow(self, what: str) -> None:
        if self.encoder_net.flow is not None:
            raise NotImplementedError(f"{what} needs the plain Gaussian encoder; this model has a flow encoder")

    def log_marginal(self, x: Tensor) -> Tensor:
        var = self.log_sigma.exp() ** 2
        cov = self.W @ self.W.T + var * torch.eye(self.W.shape[0], device=x.device)
        return MultivariateNormal(self.W @ self.mu + self.c, covariance_matrix=cov).log_prob(x)

    def _posterior_affine(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A*, b*, S): p(z|x) = N(A* x + b*, S)."""
        var = self.log_sigma.exp() ** 2
        S = torch.linalg.inv(torch.eye(self.mu.shape[0], device=self.mu.device) + self.W.T @ self.W / var)
        return S @ self.W.T / var, S @ (self.mu - self.W.T @ self.c / var), S

    def posterior(self, x: Tensor) -> MultivariateNormal:
        A, b, S = self._posterior_affine()
        return MultivariateNormal(x @ A.T + b, covariance_matrix=S)

    @torch.no_grad()
    def set_to_optimum(self, x_train: Tensor) -> None:
        """Move every parameter to the joint optimum of every bound on ``x_train``: theta to
        the maximum-likelihood estimate, q(z|x)'s mean to the exact posterior mean, and a
        learned q scale to the exact posterior's (a fixed ``q_scale`` stays).

        Identity decoder: mu = mean(x) (x ~ N(mu, 2 I)); with the fixed isotropic q scale the
        bounds are even in the offset of q's mean from the posterior mean, so A = I/2,
        b = mu/2 is their optimum (Rainforth et al. 2018). Linear decoder: probabilistic PCA
        (Tipping & Bishop 1999), sigma^2 = the mean of the x_dim - z_dim smallest eigenvalues
        of the sample covariance, W = U (Lambda - sigma^2 I)^(1/2) from the leading ones, mu
        kept and c = mean(x) - W mu; it needs z_dim < x_dim. With q the exact posterior every
        bound equals log p(x), its maximum (Burda et al. 2016, theorem 1).
        """
        self._refuse_flow("set_to_optimum")
        mean = x_train.mean(0)
        if not self.W.requires_grad:  # the identity decoder: only mu is learned
            self.mu.copy_(mean)
        else:
            D, d = self.W.shape
            if d >= D:
                raise ValueError(f"the linear decoder's maximum-likelihood estimate is unique only for z_dim < x_dim "
                                 f"(got z_dim={d}, x_dim={D})")
            centred = (x_train - mean).double()
            eigenvalues, vectors = torch.linalg.eigh(centred.T @ centred / x_train.shape[0])  # ascending
            var = eigenvalues[: D - d].mean()
            W = vectors[:, D - d:] * (eigenvalues[D - d:] - var).clamp_min(0).sqrt()
            self.W.copy_(W.to(self.W.dtype))
            self.log_sigma.copy_(0.5 * var.log().to(self.log_sigma.dtype))
            self.c.copy_(mean - self.W @ self.mu)
        A, b, S = self._posterior_affine()
        e = self.encoder_net
        e.A.copy_(A)
        e.b.copy_(b)
        if e.scale_raw.requires_grad:
            e.scale_raw.copy_(e._to_tril.inv(torch.linalg.cholesky(S)))

    @torch.no_grad()
    def set_encoder_to_posterior(self) -> None:
        """Make q(z|x) the exact posterior p(z|x) for every x (plain Gaussian encoder only)."""
        self._refuse_flow("set_encoder_to_posterior")
        A, b, S = self._posterior_affine()
        e = self.encoder_net
        e.A.copy_(A)
        e.b.copy_(b)
        e.scale_raw.copy_(e._to_tril.inv(torch.linalg.cholesky(S)))

    def exact_elbo(self, x: Tensor, q: MultivariateNormal | None = None) -> Tensor:
        """E_q[log p(z) + log p(x|z) - log q(z|x)] in closed form: (B,), for the encoder's q or
        any Gaussian ``q`` with batch (B,) (e.g. per-datapoint q_i).

        With q = N(m, S):  E_q log N(z; mu, I) = -d/2 log 2pi - (|m - mu|^2 + tr S)/2,
        E_q log N(x; Wz + c, s^2 I) = -D/2 log 2pi s^2 - (|x - Wm - c|^2 + tr(W S W^T)) / (2 s^2).
        Raises NotImplementedError with a flow encoder (q is not Gaussian then).
        """
        if q is None:
            self._refuse_flow("the closed-form exact_elbo")
            q = self.encoder(x)
        m, S = q.loc, q.covariance_matrix
        d, D = self.mu.shape[0], self.c.shape[0]
        var = self.log_sigma.exp() ** 2
        e_log_pz = -0.5 * d * math.log(2 * math.pi) - 0.5 * (((m - self.mu) ** 2).sum(-1) + torch.diagonal(S, dim1=-2, dim2=-1).sum(-1))
        resid = x - m @ self.W.T - self.c
        tr = torch.diagonal(self.W @ S @ self.W.T, dim1=-2, dim2=-1).sum(-1)
        e_log_px = -0.5 * D * torch.log(2 * math.pi * var) - 0.5 * ((resid ** 2).sum(-1) + tr) / var
        return e_log_pz + e_log_px + q.entropy()
