"""Gradient estimators as named surrogate parts for the decoder (theta) and encoder (phi).

An estimator turns a model, an objective and a minibatch into scalar surrogates: the
gradient of ``decoder`` with respect to theta is the decoder-gradient estimate, the
gradient of ``encoder`` with respect to phi the encoder-gradient estimate (the
surrogate-loss trick), and :func:`gradients` evaluates both.

Pathwise (:mod:`.pathwise`): reparam, stl, dreg, exact. Score function (:mod:`.score`):
score, score_baseline (NVIL), vimco. Relaxed (:mod:`.relaxed`): gumbel, straight_through.

Every estimator is an :class:`~lvmbench.estimators.base.Estimator` and declares on its
class what it needs and when it is biased; the registry reads those declarations.
"""

from __future__ import annotations

import inspect

from lvmbench.errors import LvmbenchError
from lvmbench.estimators.base import (
    Estimator,
    SurrogateParts,
    baseline_gradients,
    grad_or_zeros,
    gradients,
    stopped_log_w,
)
from lvmbench.estimators.pathwise import STL, DReG, ExactGradient, Reparam
from lvmbench.estimators.relaxed import Gumbel, StraightThrough
from lvmbench.estimators.score import VIMCO, Score, ScoreBaseline
from lvmbench.models import CAPABILITIES as MODEL_CAPABILITIES
from lvmbench.objectives import OBJECTIVES, Objective
from lvmbench.registry import Registry, options_of

CAPABILITIES = ("requires_rsample", "needs_model", "objectives", "min_K", "max_K", "bias")


def _check_estimator(name: str, cls: type) -> None:
    """Refuse an estimator class whose declarations are malformed."""
    where = f"estimator {name!r}"
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise LvmbenchError(f"{where} must be a subclass of lvmbench.estimators.Estimator")
    if not isinstance(cls.requires_rsample, bool):
        raise LvmbenchError(f"{where}: requires_rsample must be True or False")
    unknown = set(cls.needs_model) - set(MODEL_CAPABILITIES)
    if unknown:
        raise LvmbenchError(f"{where}: needs_model names unknown model capabilities {sorted(unknown)}")
    unknown = set(cls.objectives) - set(OBJECTIVES.names())
    if not cls.objectives or unknown:
        raise LvmbenchError(f"{where}: objectives must name registered objectives, not {sorted(unknown) or '()'}")
    if not isinstance(cls.min_K, int) or cls.min_K < 1 or (cls.max_K is not None and cls.max_K < cls.min_K):
        raise LvmbenchError(f"{where}: needs 1 <= min_K <= max_K, got min_K={cls.min_K!r}, max_K={cls.max_K!r}")


ESTIMATORS: Registry[type[Estimator]] = Registry(
    "estimator", capabilities=CAPABILITIES, check=_check_estimator,
    options=lambda cls: options_of(cls, skip=("x_dim",)), plugins="lvmbench.estimators")
for _name, _cls in (("reparam", Reparam), ("score", Score), ("stl", STL), ("dreg", DReG), ("exact", ExactGradient),
                    ("score_baseline", ScoreBaseline), ("vimco", VIMCO), ("gumbel", Gumbel),
                    ("straight_through", StraightThrough)):
    ESTIMATORS.register(_name)(_cls)


def make_estimator(name: str, x_dim: int | None = None, **options) -> Estimator:
    """The estimator ``name`` with its options; ``x_dim`` reaches only estimators that take it
    (NVIL's baseline network)."""
    cls = ESTIMATORS[name].obj
    allowed = ESTIMATORS[name].options()
    unknown = set(options) - set(allowed)
    if unknown:
        raise LvmbenchError(f"estimator {name} takes options {sorted(allowed) or 'none'}, got {sorted(unknown)}")
    takes_x_dim = "x_dim" in inspect.signature(cls).parameters
    try:
        return cls(x_dim, **options) if takes_x_dim else cls(**options)
    except (TypeError, ValueError) as err:  # an option of the wrong type or out of its range
        raise LvmbenchError(f"estimator {name}: {err}") from None


def bias_reason(estimator: str, objective: Objective, K: int) -> str | None:
    """Why the estimator is biased for this objective and K, or None if it is unbiased."""
    return ESTIMATORS[estimator].obj.bias(objective, K)


__all__ = ["CAPABILITIES", "ESTIMATORS", "Estimator", "SurrogateParts", "bias_reason", "baseline_gradients",
           "grad_or_zeros", "gradients", "make_estimator", "stopped_log_w"]
