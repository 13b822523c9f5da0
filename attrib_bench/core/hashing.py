"""Counter-based noise: pure functions of (seed, id, position), the same on every device.

The hash is a 32-bit xor-shift-multiply mixer on int64 tensors (no int64 overflow), so noise
does not depend on the batch composition, the chunk size or the global RNG: pixel removal's
ROAD noise (per image id) and the ``random`` control method (per image content) draw from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for int64 x in [0, 2³²), without int64 overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixing function (xor-shift-multiply) on int64 tensors in [0, 2³²)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hashed_normal(seed: int, samples: torch.Tensor, shape: Sequence[int],
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise (n, *shape), a pure function of (seed, sample id, position).

    Counter-based (hash, then Box-Muller), so it is the same on every device, for every batch
    composition and chunk size, and leaves the global RNG untouched. ``samples``: (n,) int ids.
    """
    device = samples.device
    count = math.prod(shape)
    h = torch.full((1, 1), hash32(torch.tensor(seed & M32)).item() ^ ((seed >> 32) & M32),
                   dtype=torch.int64, device=device)
    ids = samples.to(torch.int64).reshape(-1, 1)
    h = hash32(hash32(h ^ (ids & M32)) ^ ((ids >> 32) & M32))
    pos = torch.arange(count, dtype=torch.int64, device=device).reshape(1, -1) * 2
    u1 = (hash32(h ^ pos).double() + 0.5) / 2.0**32
    u2 = (hash32(h ^ (pos + 1)).double() + 0.5) / 2.0**32
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.to(dtype).reshape(len(ids), *shape)
