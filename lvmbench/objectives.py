"""Variational objectives as pure functions of log-weights.

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

Writing each objective as ``terms`` [(M, weight), ...] lets the DReG estimator, which
reweights samples within a group, serve every objective from one definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from lvmbench.registry import LvmbenchError, Registry

Terms = list[tuple[int, float]]


def grouped_iwae(log_w: Tensor, M: int) -> Tensor:
    """G_M: mean over M groups of the log-mean-exp within each group. (K, B) -> (B,)."""
    K, B = log_w.shape
    groups = log_w.reshape(M, K // M, B)
    return (groups.logsumexp(1) - math.log(K // M)).mean(0)


def elbo(log_w: Tensor) -> Tensor:
    """(1/K) sum_k log w_k: (K, B) -> (B,)."""
    return grouped_iwae(log_w, log_w.shape[0])


def iwae(log_w: Tensor) -> Tensor:
    """L_K = log (1/K) sum_k w_k with the max subtracted: (K, B) -> (B,)."""
    return grouped_iwae(log_w, 1)


def miwae(log_w: Tensor, M: int) -> Tensor:
    """Average of M IWAE bounds over K/M samples each: (K, B) -> (B,)."""
    return grouped_iwae(log_w, M)


def ciwae(log_w: Tensor, beta: float) -> Tensor:
    """beta * ELBO + (1 - beta) * IWAE: (K, B) -> (B,)."""
    return beta * elbo(log_w) + (1 - beta) * iwae(log_w)


def combine(log_w: Tensor, terms: Terms) -> Tensor:
    """sum_i weight_i * G_{M_i}(log w): (K, B) -> (B,)."""
    return sum(weight * grouped_iwae(log_w, M) for M, weight in terms)


@dataclass(frozen=True)
class Objective:
    """A bound with separate decoder and encoder forms; ``sampled=False`` for exact."""

    name: str
    proposal: str = "encoder"
    sampled: bool = True
    M: int | None = None
    beta: float | None = None

    def decoder_terms(self, K: int) -> Terms:
        if self.name == "elbo":
            return [(K, 1.0)]
        if self.name == "miwae":
            return [(self.M, 1.0)]
        if self.name == "ciwae":
            return [(K, self.beta), (1, 1 - self.beta)]
        return [(1, 1.0)]  # iwae, piwae, prior_mc

    def encoder_terms(self, K: int) -> Terms:
        return [(self.M, 1.0)] if self.name == "piwae" else self.decoder_terms(K)

    def options(self) -> dict:
        """The options this objective was made with (for :func:`make_objective`)."""
        return {k: v for k, v in (("M", self.M), ("beta", self.beta)) if v is not None}

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
        if not self.sampled and K != 1:
            return f"objective {self.name} is computed exactly, so only K=1 runs"
        if self.M is not None and K % self.M:
            return f"objective {self.name} with M={self.M} needs K to be a multiple of M, got K={K}"
        return None


OBJECTIVES: Registry[Objective] = Registry("objective")
_DEFAULTS = {"miwae": {"M": 8}, "piwae": {"M": 8}, "ciwae": {"beta": 0.5}}

for _name, _needs_exact, _doc in [
    ("elbo", False, "K-sample ELBO, (1/K) sum_k log w_k (Burda's VAE with k samples)"),
    ("iwae", False, "IWAE bound L_K = log (1/K) sum_k w_k (Burda et al. 2016)"),
    ("miwae", False, "average of M IWAE bounds of K/M samples (Rainforth et al. 2018)"),
    ("ciwae", False, "beta * ELBO + (1 - beta) * IWAE (Rainforth et al. 2018)"),
    ("piwae", False, "IWAE for the decoder, MIWAE for the encoder (Rainforth et al. 2018)"),
    ("prior_mc", False, "naive Monte Carlo log (1/K) sum_k p(x|z_k), z_k ~ p(z)"),
    ("exact", True, "exact log p(x) by marginalisation (tractable models only)"),
]:
    _obj = Objective(_name, proposal="prior" if _name == "prior_mc" else "encoder", sampled=_name != "exact")
    OBJECTIVES.register(_name, needs_exact=_needs_exact, sampled=_obj.sampled, proposal=_obj.proposal,
                        options=_DEFAULTS.get(_name, {}), doc=_doc)(_obj)


def make_objective(name: str, **options) -> Objective:
    """The registered objective with its options (M for miwae/piwae, beta for ciwae)."""
    entry = OBJECTIVES[name]
    allowed = entry.caps["options"]
    unknown = set(options) - set(allowed)
    if unknown:
        raise LvmbenchError(f"objective {name} takes options {sorted(allowed) or 'none'}, got {sorted(unknown)}")
    opts = {**allowed, **options}
    if "M" in opts and (not isinstance(opts["M"], int) or opts["M"] < 1):
        raise LvmbenchError(f"objective {name}: M must be an integer >= 1, got {opts['M']!r}")
    if "beta" in opts and not 0 <= opts["beta"] <= 1:
        raise LvmbenchError(f"objective {name}: beta must lie in [0, 1], got {opts['beta']!r}")
    return Objective(name, entry.obj.proposal, entry.obj.sampled, **opts)
