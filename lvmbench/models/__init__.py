"""Model registry. Each entry declares its latent type, whether the encoder is
reparameterizable, whether log p(x) is exact, and which data kinds it models."""

from __future__ import annotations

from lvmbench.models.base import Chain, LatentVariableModel, LogWeights, log_weights
from lvmbench.models.discrete import SBN, CatVAE
from lvmbench.models.gmm import GMM
from lvmbench.models.linear_gaussian import LinearGaussian
from lvmbench.models.vae import VAE
from lvmbench.models.vqvae import VQVAE
from lvmbench.registry import LvmbenchError, Registry

MODELS: Registry[type[LatentVariableModel]] = Registry("model")

# latent: continuous | discrete; reparameterizable: q has rsample; exact: log p(x) in closed form
# (sbn, catvae and vqvae also enumerate it on tiny sizes, for tests); data: data kinds modelled;
# relaxable: offers relaxed_rsample (Concrete / Gumbel-softmax); straight_through: its own
# straight-through parts (VQ-VAE); deterministic: q is one-hot, so only K=1 runs.
_CAPS = dict(reparameterizable=False, exact=False, relaxable=False, straight_through=False, deterministic=False)
MODELS.register("gmm", **{**_CAPS, "latent": "discrete", "exact": True, "data": ("continuous",)})(GMM)
MODELS.register("linear_gaussian", **{**_CAPS, "latent": "continuous", "reparameterizable": True, "exact": True,
                                      "data": ("continuous",)})(LinearGaussian)
MODELS.register("vae", **{**_CAPS, "latent": "continuous", "reparameterizable": True,
                          "data": ("binary_image",)})(VAE)
MODELS.register("sbn", **{**_CAPS, "latent": "discrete", "relaxable": True, "data": ("binary_image",)})(SBN)
MODELS.register("catvae", **{**_CAPS, "latent": "discrete", "relaxable": True, "data": ("binary_image",)})(CatVAE)
MODELS.register("vqvae", **{**_CAPS, "latent": "discrete", "straight_through": True, "deterministic": True,
                            "data": ("binary_image",)})(VQVAE)


def build_model(name: str, x_dim: int, **options) -> LatentVariableModel:
    """Instantiate a registered model; bad options give one clear message."""
    cls = MODELS[name].obj
    try:
        return cls(x_dim, **options)
    except (TypeError, ValueError) as err:
        raise LvmbenchError(f"model {name}: {err}") from None


__all__ = ["MODELS", "build_model", "Chain", "LatentVariableModel", "LogWeights", "log_weights",
           "GMM", "LinearGaussian", "VAE", "SBN", "CatVAE", "VQVAE"]
