"""Shared by the kernel dev benches: time a kernel on weights too large for the caches."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

#: cycle through this many bytes of weight copies, so every call reads from memory
CYCLE_BYTES = 512 * 2**20


def copies_for(nbytes: int) -> int:
    return max(1, CYCLE_BYTES // nbytes)


def best_gbs(fn: Callable[[np.ndarray], object], weights: Sequence[np.ndarray], nbytes: int):
    """Best time over three passes through `weights`, and the GB/s of `nbytes` it means."""
    best = float("inf")
    for i in range(3 * len(weights)):
        t = time.perf_counter()
        fn(weights[i % len(weights)])
        best = min(best, time.perf_counter() - t)
    return best, nbytes / best / 1e9
