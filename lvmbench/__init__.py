"""lvmbench: a reproducible benchmark for latent variable models.

Models (:mod:`lvmbench.models`) hand out torch distributions; objectives
(:mod:`lvmbench.objectives`) are pure functions of log-weights shaped (K, B);
gradient estimators (:mod:`lvmbench.estimators`) return surrogate parts for the decoder
and the encoder. :mod:`lvmbench.evaluation` estimates test log p(x) at large K and
checks the bound ordering; :mod:`lvmbench.gradvar` measures gradient variance and SNR;
:mod:`lvmbench.train` trains one cell; :mod:`lvmbench.cli` is the command line.
"""

__version__ = "0.1.0"
