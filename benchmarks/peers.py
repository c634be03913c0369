"""The contenders lvmbench is measured against, each on Burda et al.'s 1-layer VAE
(784-200-200-50, tanh, std = exp(linear), Bernoulli decoder) with the same weights as an
lvmbench model:

* plain hand-written PyTorch: one module, one IWAE loss, ``loss.backward()``, Adam;
* Pyro: ``RenyiELBO(alpha=0)`` (the IWAE bound) with vectorized particles, through
  ``SVI.step`` and ``pyro.optim.Adam``, distribution validation off;
* pythae: ``pythae.models.IWAE`` with an encoder and decoder of Burda's sizes, its training
  step driven directly (``model(inputs).loss``, ``backward()``, ``torch.optim.Adam``), not
  through its ``BaseTrainer``, whose data loader, logging and checkpointing would be
  measured too; its test log-likelihood is its own ``get_nll``.

Pyro and pythae come from the optional extra ``[bench]`` (``pip install -e '.[bench]'``);
they are imported only when measured, and :func:`missing` says which are absent.
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import Tensor, nn

from lvmbench.models import VAE

#: the optional peers and the package each needs
PEERS = {"pyro": "pyro", "pythae": "pythae"}


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot be measured here, or None."""
    if importlib.util.find_spec(PEERS[peer]) is None:
        return f"{PEERS[peer]} is not installed (pip install -e '.[bench]')"
    return None


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


class BurdaNets(nn.Module):
    """Encoder 784-200-200-(50 mean, 50 log std) and decoder 50-200-200-784 (logits), with
    the weights of the 1-layer lvmbench VAE ``model``."""

    def __init__(self, model: VAE):
        super().__init__()
        self.enc, self.dec = _mlp([784, 200, 200, 100]), _mlp([50, 200, 200, 784])
        for mine, theirs in ((self.enc, model.encoder_net[0].net), (self.dec, model.decoder_out)):
            linears = [m for m in theirs.modules() if isinstance(m, nn.Linear)]
            for a, b in zip([m for m in mine if isinstance(m, nn.Linear)], linears, strict=True):
                a.load_state_dict(b.state_dict())


class PlainIWAE(BurdaNets):
    """The code a researcher would write by hand: Burda's 1-layer IWAE in one module."""

    def log_w(self, x: Tensor, K: int) -> Tensor:
        """Log importance weights (K, B) of K reparameterized samples per point."""
        mu, log_std = self.enc(x).chunk(2, -1)
        eps = torch.randn(K, *mu.shape, device=x.device)
        z = mu + log_std.exp() * eps
        log_q = (-0.5 * eps ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_pz = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_px = -nn.functional.binary_cross_entropy_with_logits(self.dec(z), x.expand(K, *x.shape),
                                                                 reduction="none").sum(-1)
        return log_pz + log_px - log_q


def plain_trainer(model: VAE, K: int, lr: float, eps: float):
    """One IWAE training step of plain PyTorch on a minibatch, as a function of x (B, 784)."""
    net = PlainIWAE(model).to(next(model.parameters()).device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, eps=eps)

    def step(x: Tensor) -> None:
        opt.zero_grad()
        loss = -(torch.logsumexp(net.log_w(x, K), 0) - math.log(K)).mean()
        loss.backward()
        opt.step()

    return step


@torch.no_grad()
def plain_log_px(model: VAE, x: Tensor, K: int, batch_size: int, chunk: int) -> Tensor:
    """L_K per test point (N,) by simple chunked code: batches of points, K samples in chunks,
    one max-subtracted log-sum-exp over all chunks of a batch."""
    net = PlainIWAE(model).to(x.device)
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        lw = torch.cat([net.log_w(xb, chunk) for _ in range(K // chunk)])
        out.append(lw.logsumexp(0) - math.log(K))
    return torch.cat(out)


def pyro_trainer(model: VAE, K: int, lr: float, eps: float):
    """One step of Pyro's ``SVI`` with ``RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True)``
    (the IWAE bound), ``pyro.optim.Adam``, as a function of x (B, 784)."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, RenyiELBO

    pyro.enable_validation(False)  # as lvmbench's hot loops run torch.distributions
    pyro.clear_param_store()
    nets = BurdaNets(model).to(next(model.parameters()).device)

    def generative(x: Tensor) -> None:
        pyro.module("decoder", nets.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 50), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=nets.dec(z)).to_event(1), obs=x)

    def guide(x: Tensor) -> None:
        pyro.module("encoder", nets.enc)
        with pyro.plate("data", x.shape[0]):
            mu, log_std = nets.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(mu, log_std.exp()).to_event(1))

    elbo = RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(generative, guide, pyro.optim.Adam({"lr": lr, "eps": eps}), loss=elbo)
    return svi.step


def _pythae_iwae(model: VAE, K: int):
    from pythae.models import IWAE, IWAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    nets = BurdaNets(model)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = nets.enc

        def forward(self, x: Tensor) -> ModelOutput:
            mu, log_std = self.net(x).chunk(2, -1)
            return ModelOutput(embedding=mu, log_covariance=2 * log_std)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = nets.dec

        def forward(self, z: Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    config = IWAEConfig(input_dim=(784,), latent_dim=50, reconstruction_loss="bce", number_samples=K)
    return IWAE(config, encoder=Encoder(), decoder=Decoder()).to(next(model.parameters()).device)


def pythae_trainer(model: VAE, K: int, lr: float, eps: float):
    """One step of pythae's IWAE driven directly: loss, backward, Adam; a function of x (B, 784)."""
    iwae = _pythae_iwae(model, K)
    opt = torch.optim.Adam(iwae.parameters(), lr=lr, eps=eps)

    def step(x: Tensor) -> None:
        opt.zero_grad()
        iwae({"data": x}).loss.backward()
        opt.step()

    return step


def pythae_nll(model: VAE, K: int, chunk: int):
    """pythae's ``get_nll`` (a loop over test points, K samples each in chunks of ``chunk``),
    without autograd, as a function of the test points."""
    iwae = _pythae_iwae(model, K).eval()

    def nll(x: Tensor) -> float:
        with torch.no_grad():
            return iwae.get_nll(x, n_samples=K, batch_size=chunk)

    return nll


TRAINERS = {"plain": plain_trainer, "pyro": pyro_trainer, "pythae": pythae_trainer}
