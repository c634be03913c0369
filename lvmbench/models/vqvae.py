"""VQ-VAE on binary images (van den Oord, Vinyals, Kavukcuoglu 2017).

The encoder maps x to P continuous vectors z_e (P x D); each is replaced by its nearest
codebook vector e_k (quantization), so q(z | x) is one-hot and deterministic. Under a
uniform prior over the C codes, KL(q || p) = P log C and

    ELBO(x) = log p(x | z_q) - P log C.

Training uses straight-through gradients from z_q to z_e plus the codebook loss
||sg(z_e) - e||^2 and the commitment loss beta ||z_e - sg(e)||^2 (beta = 0.25). The
encoder and decoder are MLPs here, so the model works for any input size.

Samples come from a learned prior over codes fitted after training: an independent
categorical per position (maximum likelihood with add-one smoothing on the training
codes), a simple stand-in for the paper's autoregressive PixelCNN prior. The reported
bound always uses the uniform prior, as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Independent

from lvmbench.models.base import bernoulli_decoder, mlp, set_output_bias
from lvmbench.models.discrete import EnumerableLatents


class VQVAE(EnumerableLatents):
    """VQ-VAE: nearest-code quantization, straight-through gradients, uniform code prior."""

    straight_through = True
    deterministic = True

    def __init__(self, x_dim: int, positions: int = 16, codebook: int = 64, dim: int = 16,
                 hidden: list[int] | None = None, beta: float = 0.25):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta (the commitment weight) must be >= 0, got {beta!r}")
        hidden = list(hidden or [512, 256])
        self.P, self.C, self.D, self.beta = positions, codebook, dim, beta
        self.latent_sizes = (positions,)
        self.encoder_net = mlp([x_dim, *hidden, positions * dim], nn.ReLU)
        self.codebook = nn.Embedding(codebook, dim)
        nn.init.uniform_(self.codebook.weight, -1 / codebook, 1 / codebook)
        self.decoder_net = mlp([positions * dim, *hidden[::-1], x_dim], nn.ReLU)
        self.register_buffer("code_logits", torch.zeros(positions, codebook))  # learned sampling prior

    def init_from_data(self, x_train: Tensor) -> None:
        set_output_bias(self.decoder_net[-1], x_train)

    def n_states(self) -> int:
        return self.C ** self.P

    def z_e(self, x: Tensor) -> Tensor:
        return self.encoder_net(x).unflatten(-1, (self.P, self.D))  # (B, P, D)

    def quantize(self, z_e: Tensor) -> Tensor:
        """Index of the nearest code for each position: (B, P)."""
        return torch.cdist(z_e, self.codebook.weight.expand(*z_e.shape[:-2], self.C, self.D)).argmin(-1)

    def prior(self) -> Independent:
        return Independent(Categorical(logits=torch.zeros_like(self.code_logits)), 1)

    def decode(self, e: Tensor) -> Independent:
        return bernoulli_decoder(self.decoder_net, e.flatten(-2))

    def likelihood(self, z: Tensor) -> Independent:
        return self.decode(self.codebook(z))

    def encoder(self, x: Tensor) -> Independent:
        """The one-hot (deterministic) posterior over code indices: (B,) batch, (P,) event."""
        idx = self.quantize(self.z_e(x))
        logits = torch.full((*idx.shape, self.C), -math.inf, device=x.device).scatter(-1, idx.unsqueeze(-1), 0.0)
        return Independent(Categorical(logits=logits), 1)

    def straight_through_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log_w (1, B) with straight-through gradients, codebook loss (B,), commitment loss (B,))."""
        z_e = self.z_e(x)
        e = self.codebook(self.quantize(z_e))
        log_px = self.decode(z_e + (e - z_e).detach()).log_prob(x)
        log_w = (log_px - self.P * math.log(self.C)).unsqueeze(0)
        codebook = ((z_e.detach() - e) ** 2).sum((-2, -1))
        commitment = ((z_e - e.detach()) ** 2).sum((-2, -1))
        return log_w, codebook, commitment

    @torch.no_grad()
    def after_training(self, x_train: Tensor) -> None:
        """Fit the sampling prior: per-position code frequencies with add-one smoothing."""
        idx = self.quantize(self.z_e(binarized(x_train)))
        counts = torch.nn.functional.one_hot(idx, self.C).sum(0).float() + 1.0
        self.code_logits.copy_(counts.log() - counts.sum(-1, keepdim=True).log())

    @torch.no_grad()
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """Codes from the learned per-position prior, then x ~ p(x | z)."""
        z = Categorical(logits=self.code_logits).sample((n,))
        return z, self.likelihood(z).sample()

    def latent_states(self) -> Tensor:
        grids = torch.meshgrid(*[torch.arange(self.C, device=self.code_logits.device)] * self.P, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], -1)  # (C^P, P)


def binarized(x: Tensor) -> Tensor:
    """Deterministic binarization (threshold 0.5) for fitting the code prior."""
    return (x > 0.5).to(x.dtype)
