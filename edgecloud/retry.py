"""Exponential backoff, written once: the wait before the next try after failures in a row.

Pure (the random source is a parameter); callers own the sleeping and the counting.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_s(first_s: float, failures: int, cap_s: float, jitter: float = 0.0,
              uniform: Callable[[float, float], float] = random.uniform) -> float:
    """`first_s` doubled `failures` times, up to `cap_s`. With `jitter` (0 to 1) up to that share
    is taken off at random, so that clients that failed together do not come back in lockstep;
    never below `first_s`."""
    if failures <= 0:
        return first_s
    ceiling = max(first_s, min(cap_s, first_s * 2 ** min(failures, 30)))
    if jitter:
        return max(first_s, uniform(1.0 - jitter, 1.0) * ceiling)
    return ceiling
