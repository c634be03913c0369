"""Small statistics shared by the bounds, the measurements and the tables.

* :func:`log_mean_exp`: log (1/n) sum_i exp(a_i), max-subtracted (torch's logsumexp);
* :func:`mean_se`: a sample mean and its standard error, sd / sqrt(n);
* :func:`snr_floor` and :func:`snr_slope`: the Monte Carlo floor of an SNR estimate from M
  draws, and the log-log slope of SNR against K fitted over the K above it.
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


#: an SNR estimate counts as above the floor when it is at least this many floors
FLOOR_MULTIPLE = 3.0


def snr_floor(draws: int | np.ndarray) -> float | np.ndarray:
    """E|mean| / std of M draws of a component whose true mean is zero: sqrt(2 / (pi M)), the
    SNR estimate that pure Monte Carlo noise gives (|N(0, 1/M)| in units of the std)."""
    return np.sqrt(2 / (np.pi * np.asarray(draws, float))) if isinstance(draws, np.ndarray) else \
        math.sqrt(2 / (math.pi * draws))


def snr_slope(K: np.ndarray, snr: np.ndarray, floor: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares slope of log SNR against log K over the K whose SNR is at least
    FLOOR_MULTIPLE x its floor, and the mask of those K; NaN with fewer than two."""
    K, snr, floor = (np.asarray(v, float) for v in (K, snr, floor))
    above = np.isfinite(snr) & (snr >= FLOOR_MULTIPLE * floor)
    if above.sum() < 2:
        return math.nan, above
    return float(np.polyfit(np.log(K[above]), np.log(snr[above]), 1)[0]), above
