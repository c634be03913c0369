"""Gradient estimators as named surrogate parts for the decoder (theta) and encoder (phi).

An estimator turns a model, an objective and a minibatch into scalar surrogates: the
gradient of ``decoder`` with respect to theta is the decoder-gradient estimate, the
gradient of ``encoder`` with respect to phi the encoder-gradient estimate (the
surrogate-loss trick), and :func:`gradients` evaluates both.

Pathwise (:mod:`.pathwise`): reparam, stl, dreg, exact. Score function (:mod:`.score`):
score, score_baseline (NVIL), vimco. Relaxed (:mod:`.relaxed`): gumbel, straight_through.

Each registry entry declares what it needs: reparameterizable latents
(``requires_rsample``), a model capability (``needs_model``, any of), the objectives it
supports, a K range, and where it is biased (``bias``). Entries are functions, or
``nn.Module`` classes for estimators with state (a baseline network, an annealed
temperature); :func:`make_estimator` builds either.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from lvmbench.estimators.base import SurrogateParts, baseline_gradients, gradients, stopped_log_w
from lvmbench.estimators.pathwise import dreg, exact, reparam, stl, stl_bias
from lvmbench.estimators.relaxed import Gumbel, StraightThrough
from lvmbench.estimators.score import ScoreBaseline, score, vimco
from lvmbench.objectives import Objective
from lvmbench.registry import LvmbenchError, Registry

SAMPLED = ("elbo", "iwae", "miwae", "ciwae", "piwae", "prior_mc")
ENCODER_SAMPLED = ("elbo", "iwae", "miwae", "ciwae", "piwae")


def _always(reason: str) -> Callable[[Objective, int], str]:
    return lambda objective, K: reason


ESTIMATORS = Registry("estimator")
_CAPS = dict(requires_rsample=False, needs_model=(), objectives=SAMPLED, min_K=1, max_K=None, bias=None, options={})
for _name, _obj, _caps in [
    ("reparam", reparam, dict(requires_rsample=True)),
    ("score", score, {}),
    ("stl", stl, dict(requires_rsample=True, objectives=ENCODER_SAMPLED, bias=stl_bias)),
    ("dreg", dreg, dict(requires_rsample=True, objectives=ENCODER_SAMPLED)),
    ("exact", exact, dict(objectives=("exact",), max_K=1)),
    ("score_baseline", ScoreBaseline, dict(objectives=ENCODER_SAMPLED, options={"hidden": 100, "momentum": 0.9})),
    ("vimco", vimco, dict(objectives=("iwae",), min_K=2)),
    ("gumbel", Gumbel, dict(needs_model=("relaxable",), objectives=ENCODER_SAMPLED,
                            bias=_always("the Concrete relaxation is biased for any temperature > 0"),
                            options={"temperature": 1.0, "anneal_rate": 0.0, "min_temperature": 0.5})),
    ("straight_through", StraightThrough, dict(needs_model=("relaxable", "straight_through"),
                                               objectives=("elbo", "iwae"),
                                               bias=_always("straight-through gradients are biased"),
                                               options={"temperature": 1.0, "anneal_rate": 0.0,
                                                        "min_temperature": 0.5})),
]:
    ESTIMATORS.register(_name, **{**_CAPS, **_caps})(_obj)


def make_estimator(name: str, x_dim: int, **options) -> Callable:
    """The estimator ``name`` as a callable (model, objective, x, K) -> SurrogateParts;
    stateful ones are ``nn.Module`` instances whose parameters the trainer optimises."""
    entry = ESTIMATORS[name]
    unknown = set(options) - set(entry.caps["options"])
    if unknown:
        raise LvmbenchError(f"estimator {name} takes options {sorted(entry.caps['options']) or 'none'}, "
                            f"got {sorted(unknown)}")
    if isinstance(entry.obj, type) and issubclass(entry.obj, nn.Module):
        try:
            return entry.obj(x_dim, **options)
        except ValueError as err:
            raise LvmbenchError(f"estimator {name}: {err}") from None
    return entry.obj


def bias_reason(estimator: str, objective: Objective, K: int) -> str | None:
    """Why the estimator is biased for this objective and K, or None if it is unbiased."""
    bias = ESTIMATORS[estimator].caps["bias"]
    return bias(objective, K) if bias else None


__all__ = ["ESTIMATORS", "SurrogateParts", "bias_reason", "baseline_gradients", "gradients", "make_estimator",
           "stopped_log_w"]
