"""Bernoulli-decoder VAE with Gaussian latents and one or two stochastic layers
(Burda, Grosse, Salakhutdinov 2016, section 5).

1 layer:  q: x -200-200-> z1 (50);              p: z1 -200-200-> x
2 layers: q: x -200-200-> z1 (100) -100-100-> z2 (50);
          p: z2 -100-100-> z1 -200-200-> x
Hidden units are tanh; each Gaussian layer outputs (mean, log std), std = exp(linear).
Weights are Glorot-uniform, biases zero, and the output bias is
logit(mean training pixel clipped to [0.001, 0.999]).

``flow={"type": "iaf", ...}`` (1 stochastic layer only) makes q(z|x) an inverse
autoregressive flow on the Gaussian, conditioned on the encoder's last hidden layer
(see :mod:`lvmbench.models.flow`); its parameters belong to phi (``encoder_net``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from lvmbench.models.base import Chain, LatentVariableModel, bernoulli_decoder, mlp, set_output_bias
from lvmbench.models.flow import build_flow

#: Burda et al.'s architectures, by number of stochastic layers: (hidden sizes per layer, latent sizes)
BURDA_ARCHITECTURES = {
    1: ([[200, 200]], [50]),
    2: ([[200, 200], [100, 100]], [100, 50]),
}


class GaussianLayer(nn.Module):
    """h -> N(mean(h), exp(log_std(h))) with an MLP trunk, as an Independent Normal;
    with ``flow``, that Gaussian pushed through the flow conditioned on the trunk's output."""

    def __init__(self, sizes: list[int], out: int, flow: dict | None = None):
        super().__init__()
        self.net = nn.Sequential(mlp(sizes), nn.Tanh(), *mlp([sizes[-1], 2 * out]))
        self.flow = build_flow(flow, out, context_dim=sizes[-1])

    def forward(self, h: Tensor) -> Distribution:
        if self.flow is None:
            mean, log_std = self.net(h).chunk(2, dim=-1)
            return Independent(Normal(mean, log_std.exp()), 1)
        features = self.net[:-1](h)  # the trunk's last tanh layer: the flow's context
        mean, log_std = self.net[-1](features).chunk(2, dim=-1)
        return self.flow(Independent(Normal(mean, log_std.exp()), 1), features)


class VAE(LatentVariableModel):
    """Bernoulli VAE with Gaussian latents, 1 or 2 stochastic layers (Burda et al. 2016)."""

    latent_kind = "continuous"
    data = ("binary_image",)
    reparameterizable = True

    def __init__(self, x_dim: int, layers: int = 1, hidden: list[list[int]] | None = None,
                 latent: list[int] | None = None, flow: dict | None = None):
        super().__init__()
        if layers not in BURDA_ARCHITECTURES:
            raise ValueError(f"layers must be 1 or 2, got {layers!r}")
        if flow is not None and layers != 1:
            raise ValueError(f"flow encoder supports 1 stochastic layer, got layers={layers}")
        default_hidden, default_latent = BURDA_ARCHITECTURES[layers]
        hidden, latent = hidden or default_hidden, latent or default_latent
        if len(hidden) != layers or len(latent) != layers:
            raise ValueError(f"hidden and latent need one entry per stochastic layer ({layers})")
        self.latent_sizes = tuple(latent)
        inputs = [x_dim, *latent[:-1]]  # what each stochastic layer is computed from
        self.encoder_net = nn.ModuleList(GaussianLayer([i, *h], z, flow) for i, h, z in zip(inputs, hidden, latent))
        # p(z_l | z_{l+1}) for l < L, mirrored sizes
        self.decoder_latents = nn.ModuleList(
            GaussianLayer([latent[l + 1], *hidden[l + 1][::-1]], latent[l]) for l in range(layers - 1))
        self.decoder_out = mlp([latent[0], *hidden[0][::-1], x_dim])
        self.register_buffer("prior_loc", torch.zeros(latent[-1]))

    def init_from_data(self, x_train: Tensor) -> None:
        set_output_bias(self.decoder_out[-1], x_train)

    def prior(self) -> Distribution:
        top = Independent(Normal(self.prior_loc, torch.ones_like(self.prior_loc)), 1)
        if not len(self.decoder_latents):
            return top
        return Chain(top, list(self.decoder_latents)[::-1], self.latent_sizes, reverse=True)

    def likelihood(self, z: Tensor) -> Distribution:
        z1 = z[..., : self.latent_sizes[0]]
        return bernoulli_decoder(self.decoder_out, z1)

    def encoder(self, x: Tensor) -> Distribution:
        first, *links = self.encoder_net
        if not links:
            return first(x)
        return Chain(first(x), links, self.latent_sizes)
