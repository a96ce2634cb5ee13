"""When requests are sent: open-loop arrival schedules (pure, seeded)."""

from __future__ import annotations

import random


def poisson_schedule(
    rate: float, *, count: int | None = None, duration_s: float | None = None, seed: int = 0
) -> list[float]:
    """Send offsets (seconds from the level start) of a Poisson process at `rate` requests/s.

    Stops after `count` arrivals or at `duration_s`, whichever comes first (one is required).
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if count is None and duration_s is None:
        raise ValueError("give a count or a duration")
    rng = random.Random(f"poisson:{rate}:{seed}")
    out: list[float] = []
    t = 0.0
    while count is None or len(out) < count:
        t += rng.expovariate(rate)
        if duration_s is not None and t > duration_s:
            break
        out.append(t)
    return out

