"""Measurements of trained runs, each with its own settings: :mod:`.evaluation` (large-K
log p(x), the bound curve and its ordering), :mod:`.gradvar` (gradient variance and SNR at
training snapshots) and :mod:`.amortization` (per-datapoint inference, the amortization
gap). Each reads a run directory through :mod:`lvmbench.runs`, never the trainer."""
