"""Variational objectives as pure functions of log-weights shaped (K, B).

Every sampled bound here is a weighted sum of *grouped* importance-weighted terms:
the K samples of a data point are split into M contiguous groups of K/M and

    G_M(log w) = 1/M sum_m log( M/K sum_{k in group m} w_k ).

* ``elbo``  = G_K  : Burda et al.'s "VAE with k samples", (1/K) sum_k log w_k
* ``iwae``  = G_1  : L_K = log (1/K) sum_k w_k                        (Burda et al. 2016)
* ``miwae`` = G_M  : the average of M IWAE bounds of K/M samples each (Rainforth et al. 2018)
* ``ciwae`` = beta G_K + (1 - beta) G_1                               (Rainforth et al. 2018)
* ``piwae`` : G_1 for the decoder, G_M for the encoder                (Rainforth et al. 2018)
* ``prior_mc``: G_1 with the prior as proposal, w = p(x|z) (the lecture's naive Monte Carlo)
* ``exact`` : log p(x) itself, for tractable models (the lecture's "Train" section)

Each objective is written once, as its ``terms`` [(M, weight), ...]; the bound, the DReG
estimator (which reweights samples within a group) and the exact expectations of
:mod:`lvmbench.exact` all read those terms. An objective class declares what it needs
(``proposal``, ``sampled``, ``needs_exact``) and takes its options, with their defaults,
in its constructor.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from lvmbench.errors import LvmbenchError
from lvmbench.registry import Registry, options_of
from lvmbench.stats import log_mean_exp

Terms = list[tuple[int, float]]


def grouped_iwae(log_w: Tensor, M: int) -> Tensor:
    """G_M: mean over M groups of the log-mean-exp within each group. (K, B) -> (B,)."""
    K, B = log_w.shape
    return log_mean_exp(log_w.reshape(M, K // M, B), dim=1).mean(0)


def combine(log_w: Tensor, terms: Terms) -> Tensor:
    """sum_i weight_i * G_{M_i}(log w): (K, B) -> (B,)."""
    return sum(weight * grouped_iwae(log_w, M) for M, weight in terms)


class Objective:
    """A bound with a decoder form and an encoder form, each a list of grouped terms.

    Declarations: ``proposal`` ("encoder", or "prior" for naive Monte Carlo), ``sampled``
    (False: computed exactly, K=1 only), ``needs_exact`` (the model must have an exact
    log p(x)). Options are the constructor's keyword arguments.
    """

    name: ClassVar[str]
    proposal: ClassVar[str] = "encoder"
    sampled: ClassVar[bool] = True
    needs_exact: ClassVar[bool] = False

    def decoder_terms(self, K: int) -> Terms:
        raise NotImplementedError

    def encoder_terms(self, K: int) -> Terms:
        return self.decoder_terms(K)

    def options(self) -> dict:
        """The options this objective was made with (for :func:`make_objective`)."""
        return {k: getattr(self, k) for k in options_of(type(self))}

    def shared(self, K: int) -> bool:
        """True when decoder and encoder ascend the same bound (all but piwae)."""
        return self.decoder_terms(K) == self.encoder_terms(K)

    def decoder(self, log_w: Tensor) -> Tensor:
        """The bound the decoder ascends: (K, B) -> (B,)."""
        return combine(log_w, self.decoder_terms(log_w.shape[0]))

    def encoder(self, log_w: Tensor) -> Tensor:
        """The bound the encoder ascends: (K, B) -> (B,)."""
        return combine(log_w, self.encoder_terms(log_w.shape[0]))

    def why_invalid(self, K: int) -> str | None:
        """Why this objective cannot run with K samples, or None."""
        if not self.sampled and K != 1:
            return f"objective {self.name} is computed exactly, so only K=1 runs"
        return None

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.options() == self.options()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.options().items()))))


class _Grouped(Objective):
    """Objectives with M groups: K must be a multiple of M."""

    def __init__(self, M: int = 8):
        if isinstance(M, bool) or not isinstance(M, int) or M < 1:
            raise LvmbenchError(f"objective {self.name}: M must be an integer >= 1, got {M!r}")
        self.M = M

    def why_invalid(self, K: int) -> str | None:
        if K % self.M:
            return f"objective {self.name} with M={self.M} needs K to be a multiple of M, got K={K}"
        return None


def _check_objective(name: str, cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise LvmbenchError(f"objective {name!r} must be a subclass of lvmbench.objectives.Objective")
    if cls.proposal not in ("encoder", "prior"):
        raise LvmbenchError(f"objective {name!r}: proposal must be 'encoder' or 'prior', got {cls.proposal!r}")
    if cls.needs_exact and cls.sampled:
        raise LvmbenchError(f"objective {name!r}: only an objective that is not sampled needs an exact log p(x)")
    if getattr(cls, "name", None) != name:
        raise LvmbenchError(f"objective {name!r} must declare name = {name!r}, not {getattr(cls, 'name', None)!r}")


OBJECTIVES: Registry[type[Objective]] = Registry(
    "objective", capabilities=("proposal", "sampled", "needs_exact"), check=_check_objective,
    options=options_of)


@OBJECTIVES.register("elbo")
class ELBO(Objective):
    """K-sample ELBO, (1/K) sum_k log w_k (Burda's VAE with k samples)"""

    name = "elbo"

    def decoder_terms(self, K: int) -> Terms:
        return [(K, 1.0)]


@OBJECTIVES.register("iwae")
class IWAE(Objective):
    """IWAE bound L_K = log (1/K) sum_k w_k (Burda et al. 2016)"""

    name = "iwae"

    def decoder_terms(self, K: int) -> Terms:
        return [(1, 1.0)]


@OBJECTIVES.register("miwae")
class MIWAE(_Grouped):
    """average of M IWAE bounds of K/M samples (Rainforth et al. 2018)"""

    name = "miwae"

    def decoder_terms(self, K: int) -> Terms:
        return [(self.M, 1.0)]


@OBJECTIVES.register("ciwae")
class CIWAE(Objective):
    """beta * ELBO + (1 - beta) * IWAE (Rainforth et al. 2018)"""

    name = "ciwae"

    def __init__(self, beta: float = 0.5):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
            raise LvmbenchError(f"objective {self.name}: beta must lie in [0, 1], got {beta!r}")
        self.beta = beta

    def decoder_terms(self, K: int) -> Terms:
        return [(K, self.beta), (1, 1 - self.beta)]


@OBJECTIVES.register("piwae")
class PIWAE(_Grouped):
    """IWAE for the decoder, MIWAE for the encoder (Rainforth et al. 2018)"""

    name = "piwae"

    def decoder_terms(self, K: int) -> Terms:
        return [(1, 1.0)]

    def encoder_terms(self, K: int) -> Terms:
        return [(self.M, 1.0)]


@OBJECTIVES.register("prior_mc")
class PriorMC(IWAE):
    """naive Monte Carlo log (1/K) sum_k p(x|z_k), z_k ~ p(z)"""

    name = "prior_mc"
    proposal = "prior"


@OBJECTIVES.register("exact")
class Exact(IWAE):
    """exact log p(x) by marginalisation (tractable models only)"""

    name = "exact"
    sampled = False
    needs_exact = True


def make_objective(name: str, **options) -> Objective:
    """The registered objective with its options (M for miwae/piwae, beta for ciwae)."""
    cls = OBJECTIVES[name].obj
    allowed = options_of(cls)
    unknown = set(options) - set(allowed)
    if unknown:
        raise LvmbenchError(f"objective {name} takes options {sorted(allowed) or 'none'}, got {sorted(unknown)}")
    return cls(**options)
