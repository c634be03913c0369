"""Random-number plumbing: independent streams derived from one seed, and forked RNGs.

A run has one seed, but several purposes draw random numbers: the model's initial
weights, the order of the training data, the binarization of minibatches, the samples of
the estimators, the evaluation, the gradient draws. Seeding a ``torch.Generator`` and the
global RNG with the same value makes two of them one and the same stream. Instead each
purpose gets its own seed, :func:`stream_seed`, spawned from the run's seed by numpy's
``SeedSequence`` (its ``spawn_key`` is the purpose's fixed index), so the streams are
independent, deterministic, and stable when purposes are added.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from lvmbench.errors import LvmbenchError

#: every purpose that draws random numbers; the index is the SeedSequence spawn key, so new
#: purposes go at the end
PURPOSES = ("model_init", "data_order", "binarization", "sampling", "evaluation", "evaluation_binarization",
            "gradients", "gradients_batch", "amortization", "amortization_evaluation", "ais", "simulation",
            "estimator_init", "gradients_binarization", "gradients_point", "amortization_binarization",
            "amortization_selection", "ais_tuning", "ais_reverse")


def stream_seed(seed: int, purpose: str, *index: int) -> int:
    """The seed of ``purpose``'s stream for a run seeded with ``seed``: a 63-bit integer from
    ``SeedSequence(seed, spawn_key=(index of purpose, *index))``. ``index`` numbers
    independent sub-streams of one purpose (e.g. one per batch of test points)."""
    if purpose not in PURPOSES:
        raise LvmbenchError(f"unknown random stream {purpose!r}; choose one of: {', '.join(PURPOSES)}")
    key = (PURPOSES.index(purpose), *index)
    words = np.random.SeedSequence(seed, spawn_key=key).generate_state(2, np.uint32)
    return int((int(words[0]) << 32 | int(words[1])) & (2 ** 63 - 1))


def stream(seed: int, purpose: str, device: torch.device | str = "cpu", *, index: tuple[int, ...] = ()) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded for ``purpose`` (:func:`stream_seed`; ``index``
    numbers its sub-streams)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, purpose, *index))


@contextmanager
def forked_rng(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Run the block on a fork of torch's global generators (CPU, and ``device``'s when it is
    a GPU), seeded with ``seed`` if given; the caller's global RNG state is restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield
