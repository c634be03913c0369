"""Counter-based random numbers: noise that is a pure function of a key, a counter and the
position of each number.

The trainer runs a bundle of cells as one batched computation (``torch.func.vmap``), and
each member must draw exactly the numbers it would draw alone, so that a seed gives the
same run in any bundle. torch's generators cannot do that under ``vmap`` (one generator
fills the whole batch), so the training noise comes from here instead: the i-th number
of a draw is a hash of (member key, step, draw, i), like the Philox and Threefry
generators of Salmon et al. (2011, "Parallel random numbers: as easy as 1, 2, 3"). The
hash is splitmix64's finaliser (Steele, Lea & Flood 2014), written in int64 tensor
operations with wrapping multiplication, so it runs batched, on any device, inside
``vmap`` and CUDA graphs, and gives the same numbers on CPU and GPU.

:func:`using` makes a :class:`Noise` the active source for a block; sampling code asks
:func:`active` and draws from it (see :func:`lvmbench.models.base.draw`), or from torch's
global generator when no source is active (evaluation and the other measurements).
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

_M64 = 1 << 64


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return c - _M64 if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_STEP = _signed(0xD1B54A32D192ED03)
_DRAW = _signed(0x8CB92BA72F3D8DD7)


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return torch.bitwise_right_shift(x, s) & ((1 << (64 - s)) - 1)


def mix(x: Tensor) -> Tensor:
    """splitmix64's finaliser: a bijection of 64-bit words that scrambles every bit."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def key_of(seed: int) -> Tensor:
    """The int64 key of a stream seed (a 63-bit integer, e.g. from lvmbench.rng.stream_seed)."""
    return mix(torch.tensor(seed, dtype=torch.int64))


def _hash_range(n: int, device: torch.device) -> Tensor:
    """mix(i + golden) for i < n: the index part of every draw of n numbers."""
    return mix(torch.arange(n, dtype=torch.int64, device=device) + _GOLDEN)


_hash_range_kept = functools.lru_cache(maxsize=32)(_hash_range)


def _index_hash(n: int, device: torch.device) -> Tensor:
    """:func:`_hash_range`, kept between steps (a third of a draw's hashing), except while
    torch.compile traces, which fuses it into the draw."""
    return _hash_range(n, device) if torch.compiler.is_compiling() else _hash_range_kept(n, device)


class Noise:
    """The random numbers of one member at one step: ``key`` (an int64 tensor, one per member;
    under ``vmap`` each member sees its own) and ``counter`` (the step). Successive draws
    get successive draw numbers, so the same code path draws the same numbers every time."""

    def __init__(self, key: Tensor, counter: int | Tensor):
        self.key, self.counter, self.draws = key, counter, 0

    def bits(self, shape: torch.Size | tuple[int, ...], device: torch.device) -> Tensor:
        """int64 words, one per element of ``shape``: hash(key, counter, draw, index)."""
        self.draws += 1
        n = math.prod(shape)
        base = mix(mix(self.key.to(device) ^ (torch.as_tensor(self.counter, device=device) * _STEP))
                   + _signed(self.draws * _DRAW % _M64))
        return mix(base.unsqueeze(-1) ^ _index_hash(n, device)).reshape(*base.shape, *shape)

    def uniform(self, shape, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """Uniform numbers in the open interval (0, 1): the top 53 bits, centred in their cell,
        then rounded to ``dtype`` and kept inside (0, 1) there. Rounding alone reaches 1.0
        (the top cell's centre, 1 - 2^-54, rounds to 1.0 even in float64, and float32 rounds
        everything above 1 - 2^-25 there), where -log(-log u) and erfinv(2u - 1) are
        infinite: a Gumbel-softmax run diverged on it."""
        u = ((_shr(self.bits(tuple(shape), torch.device(device)), 11).double() + 0.5) * 2.0 ** -53).to(dtype)
        info = torch.finfo(dtype)
        return u.clamp(info.tiny, 1.0 - info.eps / 2)

    def normal(self, shape, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """Standard normal numbers by the inverse CDF, sqrt(2) erfinv(2u - 1), in float64."""
        u = self.uniform(shape, torch.float64, device)
        return (math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)).to(dtype)

    def gumbel(self, shape, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """Standard Gumbel numbers, -log(-log u)."""
        return -torch.log(-torch.log(self.uniform(shape, torch.float64, device))).to(dtype)


#: the active sources, innermost last: a plain list, which torch.compile traces (a ContextVar
#: would break the graph)
_ACTIVE: list[Noise] = []


@contextmanager
def using(noise: Noise) -> Iterator[Noise]:
    """Make ``noise`` the active source for the block."""
    _ACTIVE.append(noise)
    try:
        yield noise
    finally:
        _ACTIVE.pop()


def active() -> Noise | None:
    """The active noise source, or None (then torch's global generator is used)."""
    return _ACTIVE[-1] if _ACTIVE else None


def uniform_like(t: Tensor) -> Tensor:
    """Uniform (0, 1) numbers shaped like ``t``: from the active source, else torch.rand_like."""
    noise = active()
    return torch.rand_like(t) if noise is None else noise.uniform(t.shape, t.dtype, t.device)
