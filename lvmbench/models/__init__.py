"""Model registry. Each entry declares its latent type, whether the encoder is
reparameterizable, whether log p(x) is exact, and which data kinds it models."""

from __future__ import annotations

from lvmbench.models.base import Chain, LatentVariableModel, LogWeights, log_weights
from lvmbench.models.gmm import GMM
from lvmbench.models.linear_gaussian import LinearGaussian
from lvmbench.models.vae import VAE
from lvmbench.registry import LvmbenchError, Registry

MODELS: Registry[type[LatentVariableModel]] = Registry("model")

MODELS.register("gmm", latent="discrete", reparameterizable=False, exact=True,
                data=("continuous",))(GMM)
MODELS.register("linear_gaussian", latent="continuous", reparameterizable=True, exact=True,
                data=("continuous",))(LinearGaussian)
MODELS.register("vae", latent="continuous", reparameterizable=True, exact=False,
                data=("binary_image",))(VAE)


def build_model(name: str, x_dim: int, **options) -> LatentVariableModel:
    """Instantiate a registered model; bad options give one clear message."""
    cls = MODELS[name].obj
    try:
        return cls(x_dim, **options)
    except TypeError as err:
        raise LvmbenchError(f"model {name}: {err}") from None
    except ValueError as err:
        raise LvmbenchError(f"model {name}: {err}") from None


__all__ = ["MODELS", "build_model", "Chain", "LatentVariableModel", "LogWeights", "log_weights",
           "GMM", "LinearGaussian", "VAE"]
