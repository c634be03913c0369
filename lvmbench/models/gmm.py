"""Mixture of Gaussians with a discrete latent, as in CS294-158 lecture 4.

    z ~ Categorical(pi),   x | z = k ~ N(mu_k, Sigma_k)   (full covariance)
    log p(x) = logsumexp_k [log pi_k + log N(x; mu_k, Sigma_k)]      (exact)
    p(z = k | x) = pi_k N(x; mu_k, Sigma_k) / p(x)                   (Bayes' rule)

The amortized encoder q_phi(z | x) is a categorical distribution whose logits come
from an MLP, used by the sampled objectives.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, MultivariateNormal, constraints, transform_to

from lvmbench.models.base import LatentVariableModel, mlp


class GMM(LatentVariableModel):
    """Gaussian mixture: discrete z over C components, full-covariance Gaussians."""

    latent_kind = "discrete"
    data = ("continuous",)
    exact = True

    def __init__(self, x_dim: int, components: int = 3, learn_prior: bool = False,
                 hidden: tuple[int, ...] = (64,)):
        super().__init__()
        self.latent_sizes = (components,)
        self.loc = nn.Parameter(torch.randn(components, x_dim))
        self._to_tril = transform_to(constraints.lower_cholesky)
        self.scale_raw = nn.Parameter(self._to_tril.inv(torch.eye(x_dim).expand(components, x_dim, x_dim)))
        self.prior_logits = nn.Parameter(torch.zeros(components), requires_grad=learn_prior)
        self.encoder_net = mlp([x_dim, *hidden, components], nn.ReLU)

    def init_from_data(self, x_train: Tensor) -> None:
        """Means at randomly chosen data points, covariances at the data covariance."""
        idx = torch.randperm(x_train.shape[0])[: self.loc.shape[0]]
        cov = torch.cov(x_train.T).reshape(self.loc.shape[1], self.loc.shape[1])
        with torch.no_grad():
            self.loc.copy_(x_train[idx])
            self.scale_raw.copy_(self._to_tril.inv(torch.linalg.cholesky(cov)).expand_as(self.scale_raw))

    @property
    def scale_tril(self) -> Tensor:
        return self._to_tril(self.scale_raw)  # (C, D, D)

    def prior(self) -> Categorical:
        return Categorical(logits=self.prior_logits)

    def components(self) -> MultivariateNormal:
        return MultivariateNormal(self.loc, scale_tril=self.scale_tril)  # batch (C,)

    def likelihood(self, z: Tensor) -> MultivariateNormal:
        return MultivariateNormal(self.loc[z], scale_tril=self.scale_tril[z])

    def encoder(self, x: Tensor) -> Categorical:
        return Categorical(logits=self.encoder_net(x))

    def _log_joint(self, x: Tensor) -> Tensor:
        """log p(x, z=k) for every k: (B, C)."""
        return self.prior().logits + self.components().log_prob(x.unsqueeze(-2))

    def log_marginal(self, x: Tensor) -> Tensor:
        return self._log_joint(x).logsumexp(-1)  # (B,)

    def posterior(self, x: Tensor) -> Categorical:
        return Categorical(logits=self._log_joint(x))
