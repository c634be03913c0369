"""Models with discrete latents: sigmoid belief nets and categorical VAEs.

* ``sbn``: layers of binary units (Neal 1992; the NVIL/VIMCO setting of Mnih & Gregor
  2014 and Mnih & Rezende 2016). p(z_L) = Bernoulli(sigmoid(b)),
  p(z_l | z_{l+1}) = Bernoulli(sigmoid(W_l z_{l+1} + b_l)), p(x | z_1) likewise; the
  encoder mirrors it, q(z_1 | x) q(z_2 | z_1) ...
* ``catvae``: N categorical variables of C classes, one-hot (Jang, Gu, Poole 2017:
  20 x 10), uniform prior, MLP encoder and decoder.

Neither is reparameterizable. Both offer ``relaxed_rsample`` for the Concrete /
Gumbel-softmax estimators (Maddison et al. 2017; Jang et al. 2017), and on tiny sizes
(at most ``MAX_ENUMERABLE_STATES`` latent configurations) the exact log p(x) and
posterior by enumeration.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, OneHotCategorical

from lvmbench.models.base import (BernoulliLinear, BernoulliLogits, Chain, LatentVariableModel, bernoulli_decoder,
                                  mlp, set_output_bias)
from lvmbench.noise import uniform_like

MAX_ENUMERABLE_STATES = 4096


class EnumerableLatents(LatentVariableModel):
    """Exact log p(x) and p(z | x) by summing over every latent configuration."""

    latent_kind = "discrete"
    data = ("binary_image",)

    @property
    def exact(self) -> bool:
        """when its latents take at most 4096 joint values (then enumerated)"""
        return self.n_states() <= MAX_ENUMERABLE_STATES

    def n_states(self) -> int:
        """The number of joint latent configurations."""
        raise NotImplementedError

    def latent_states(self) -> Tensor:
        """Every latent configuration: (S, *event_shape)."""
        raise NotImplementedError

    def _log_joint(self, x: Tensor) -> Tensor:
        z = self.latent_states().unsqueeze(1)  # (S, 1, ...)
        return (self.prior().log_prob(z) + self.likelihood(z).log_prob(x)).T  # (B, S)

    def log_marginal(self, x: Tensor) -> Tensor:
        return self._log_joint(x).logsumexp(-1)  # (B,)

    def posterior(self, x: Tensor) -> Categorical:
        """p(z | x) over the indices of :meth:`latent_states`."""
        return Categorical(logits=self._log_joint(x))


def _straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Forward value ``hard``, gradient of ``soft``."""
    return hard + (soft - soft.detach())  # exactly ``hard`` in the forward pass


class SBN(EnumerableLatents):
    """Sigmoid belief net with one or more layers of binary latent units."""

    relaxable = True

    def __init__(self, x_dim: int, latent: list[int] | None = None, hidden: list[int] | None = None):
        super().__init__()
        latent = list(latent or [200])
        hidden = list(hidden or [])  # deterministic tanh layers inside each conditional
        self.latent_sizes = tuple(latent)
        ins = [x_dim, *latent[:-1]]
        self.encoder_net = nn.ModuleList(mlp([i, *hidden, z]) for i, z in zip(ins, latent))
        self.decoder_nets = nn.ModuleList(mlp([z, *hidden, i]) for i, z in zip(ins, latent))  # z_l -> layer below
        self.prior_logits = nn.Parameter(torch.zeros(latent[-1]))

    def init_from_data(self, x_train: Tensor) -> None:
        set_output_bias(self.decoder_nets[0][-1], x_train)

    def n_states(self) -> int:
        return 2 ** sum(self.latent_sizes)

    @staticmethod
    def _bern(logits: Tensor) -> Independent:
        return Independent(BernoulliLogits(logits), 1)

    def prior(self) -> Distribution:
        top = self._bern(self.prior_logits)
        links = [lambda z, net=net: self._bern(net(z)) for net in list(self.decoder_nets)[1:][::-1]]
        return Chain(top, links, self.latent_sizes, reverse=True) if links else top

    def likelihood(self, z: Tensor) -> BernoulliLinear:
        return bernoulli_decoder(self.decoder_nets[0], z[..., : self.latent_sizes[0]])

    def encoder(self, x: Tensor) -> Distribution:
        first, *rest = self.encoder_net
        links = [lambda z, net=net: self._bern(net(z)) for net in rest]
        return Chain(self._bern(first(x)), links, self.latent_sizes) if links else self._bern(first(x))

    def relaxed_rsample(self, x: Tensor, K: int, temperature: float) -> tuple[Tensor, Tensor]:
        """(z_relaxed, z_st): Concrete (binary) samples with logistic noise, layer by layer.

        z_st has the hard values of an exact sample from q in the forward pass and the
        relaxed sample's gradient. Each layer's logits come from the layer below along the
        same path (relaxed or straight-through). Shapes (K, B, sum(latent_sizes)).
        """
        soft_in = st_in = x.expand(K, *x.shape)
        softs, sts = [], []
        for net in self.encoder_net:
            logits = net(soft_in)
            u = uniform_like(logits)
            noise = torch.log(u) - torch.log1p(-u)  # Logistic(0, 1), shared by both paths
            soft = torch.sigmoid((logits + noise) / temperature)
            st_logits = (logits if st_in is soft_in else net(st_in)) + noise  # the input layer is shared
            st = _straight_through((st_logits > 0).to(x.dtype), torch.sigmoid(st_logits / temperature))
            softs.append(soft)
            sts.append(st)
            soft_in, st_in = soft, st
        return torch.cat(softs, -1), torch.cat(sts, -1)

    def latent_states(self) -> Tensor:
        n = sum(self.latent_sizes)
        bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), device=self.prior_logits.device)
        return bits  # (2^n, n)


class CatVAE(EnumerableLatents):
    """VAE with N one-hot categorical latents of C classes (Jang et al. 2017: 20 x 10)."""

    relaxable = True

    def __init__(self, x_dim: int, variables: int = 20, classes: int = 10, hidden: list[int] | None = None):
        super().__init__()
        hidden = list(hidden or [512, 256])
        self.shape = (variables, classes)
        self.latent_sizes = (variables,)
        self.encoder_net = mlp([x_dim, *hidden, variables * classes], nn.ReLU)
        self.decoder_net = mlp([variables * classes, *hidden[::-1], x_dim], nn.ReLU)
        self.register_buffer("prior_logits", torch.zeros(variables, classes))

    def init_from_data(self, x_train: Tensor) -> None:
        set_output_bias(self.decoder_net[-1], x_train)

    def n_states(self) -> int:
        return self.shape[1] ** self.shape[0]

    def prior(self) -> Independent:
        return Independent(OneHotCategorical(logits=self.prior_logits), 1)

    def likelihood(self, z: Tensor) -> BernoulliLinear:
        return bernoulli_decoder(self.decoder_net, z.flatten(-2))

    def _logits(self, x: Tensor) -> Tensor:
        return self.encoder_net(x).unflatten(-1, self.shape)  # (B, N, C)

    def encoder(self, x: Tensor) -> Independent:
        return Independent(OneHotCategorical(logits=self._logits(x)), 1)

    def relaxed_rsample(self, x: Tensor, K: int, temperature: float) -> tuple[Tensor, Tensor]:
        """(z_relaxed, z_st) from Gumbel-softmax with shared Gumbel noise: (K, B, N, C)."""
        logits = self._logits(x).log_softmax(-1)
        gumbel = -torch.log(-torch.log(uniform_like(logits.expand(K, *logits.shape)).clamp_min(1e-20)))
        soft = ((logits + gumbel) / temperature).softmax(-1)
        hard = torch.nn.functional.one_hot(soft.argmax(-1), self.shape[1]).to(soft.dtype)
        return soft, _straight_through(hard, soft)

    def latent_states(self) -> Tensor:
        N, C = self.shape
        idx = torch.tensor(list(itertools.product(range(C), repeat=N)), device=self.prior_logits.device)
        return torch.nn.functional.one_hot(idx, C).to(self.prior_logits.dtype)  # (C^N, N, C)

