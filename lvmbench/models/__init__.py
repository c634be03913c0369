"""The model registry. Each model class declares its capabilities on itself (see
:class:`~lvmbench.models.base.LatentVariableModel`): the kind of latent, whether the
encoder is reparameterizable, whether log p(x) is exact (at which size), whether it can
be relaxed or has its own straight-through parts, and which kinds of data it models.
The registry checks those declarations when an entry is added."""

from __future__ import annotations

from lvmbench.data import DATA_KINDS
from lvmbench.errors import LvmbenchError
from lvmbench.models.base import LatentVariableModel, LogWeights, log_weights
from lvmbench.models.discrete import SBN, CatVAE
from lvmbench.models.gmm import GMM
from lvmbench.models.linear_gaussian import LinearGaussian
from lvmbench.models.vae import VAE
from lvmbench.models.vqvae import VQVAE
from lvmbench.registry import Registry, describe, options_of

CAPABILITIES = ("latent_kind", "data", "reparameterizable", "exact", "relaxable", "straight_through", "deterministic")


def _overrides(cls: type, method: str) -> bool:
    return getattr(cls, method, None) is not getattr(LatentVariableModel, method, None)


def _check_model(name: str, cls: type) -> None:
    """Refuse a model class whose declarations contradict what it implements."""
    where = f"model {name!r}"
    if not (isinstance(cls, type) and issubclass(cls, LatentVariableModel)):
        raise LvmbenchError(f"{where} must be a subclass of lvmbench.models.LatentVariableModel")
    if cls.latent_kind not in ("continuous", "discrete"):
        raise LvmbenchError(f"{where}: latent_kind must be 'continuous' or 'discrete', got {cls.latent_kind!r}")
    if not cls.data or not set(cls.data) <= set(DATA_KINDS):
        raise LvmbenchError(f"{where}: data must list kinds among {', '.join(DATA_KINDS)}, got {cls.data!r}")
    for cap in ("reparameterizable", "relaxable", "straight_through", "deterministic"):
        if not isinstance(getattr(cls, cap), bool):
            raise LvmbenchError(f"{where}: {cap} must be True or False, got {getattr(cls, cap)!r}")
    for cap, methods in (("exact", ("log_marginal", "posterior")), ("relaxable", ("relaxed_rsample",)),
                         ("straight_through", ("straight_through_parts",))):
        missing = [m for m in methods if not _overrides(cls, m)]
        if describe(cls, cap) is not False and missing:
            raise LvmbenchError(f"{where} declares {cap} but does not define {', '.join(missing)}")


MODELS: Registry[type[LatentVariableModel]] = Registry(
    "model", capabilities=CAPABILITIES, check=_check_model, options=lambda cls: options_of(cls, skip=("x_dim",)),
    plugins="lvmbench.models")
for _name, _cls in (("gmm", GMM), ("linear_gaussian", LinearGaussian), ("vae", VAE), ("sbn", SBN),
                    ("catvae", CatVAE), ("vqvae", VQVAE)):
    MODELS.register(_name)(_cls)


def build_model(name: str, x_dim: int, **options) -> LatentVariableModel:
    """Instantiate a registered model; bad options give one clear message."""
    cls = MODELS[name].obj
    try:
        return cls(x_dim, **options)
    except (TypeError, ValueError) as err:
        raise LvmbenchError(f"model {name}: {err}") from None


__all__ = ["CAPABILITIES", "DATA_KINDS", "MODELS", "build_model", "LatentVariableModel", "LogWeights", "log_weights",
           "GMM", "LinearGaussian", "VAE", "SBN", "CatVAE", "VQVAE"]
