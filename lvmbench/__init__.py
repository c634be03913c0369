"""lvmbench: a reproducible benchmark for latent variable models.

The layers, bottom up (imports run one way, from a layer to those below it):

* foundation: :mod:`~lvmbench.errors`, :mod:`~lvmbench.registry`, :mod:`~lvmbench.io`,
  :mod:`~lvmbench.stats`, :mod:`~lvmbench.rng`, :mod:`~lvmbench.settings` (typed settings
  and the training spec of a cell);
* the numerical core: :mod:`~lvmbench.data` (datasets, remote files), :mod:`~lvmbench.models`
  (torch distributions), :mod:`~lvmbench.objectives` (pure functions of log-weights shaped
  (K, B)), :mod:`~lvmbench.estimators` (named surrogate parts for the decoder and the
  encoder), :mod:`~lvmbench.exact` (exact expectations and gradients);
* the plan: :mod:`~lvmbench.grid` (which cells a config holds and why the others cannot run);
* runs: :mod:`~lvmbench.devices`, :mod:`~lvmbench.runs` (the one reader and writer of run
  directories), :mod:`~lvmbench.train` (the training step and the trainer);
* measurements of trained runs: :mod:`lvmbench.measure` (evaluation, gradient variance,
  amortization), which never import the trainer;
* tables and figures: :mod:`lvmbench.report` (aggregate, published numbers, plots);
* :mod:`~lvmbench.cli`, the command line every pipeline rule calls.
"""

__version__ = "0.1.0"
