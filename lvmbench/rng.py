"""Random-number plumbing shared by training and the measurements."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def forked_rng(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Run the block on a fork of torch's global generators (CPU, and ``device``'s when it is
    a GPU), seeded with ``seed`` if given; the caller's global RNG state is restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield
