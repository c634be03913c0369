"""Small statistics shared by the bounds, the measurements and the tables.

* :func:`log_mean_exp`: log (1/n) sum_i exp(a_i), max-subtracted (torch's logsumexp);
* :func:`mean_se`: a sample mean and its standard error, sd / sqrt(n).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def log_mean_exp(a: Tensor, dim: int = 0) -> Tensor:
    """log (1/n) sum_i exp(a_i) along ``dim`` (n = a.shape[dim]), max-subtracted."""
    return a.logsumexp(dim) - math.log(a.shape[dim])


def mean_se(values: np.ndarray | Tensor) -> tuple[float, float]:
    """Mean and standard error (sample sd with ddof=1 over sqrt(n)); the SE is 0 for one value."""
    v = values.detach().double().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    v = v.reshape(-1)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
