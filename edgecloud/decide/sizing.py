"""Capacity sizing: how many boxes or replicas a peak needs, and spares for availability.

Pure arithmetic; every formula is in docs/decide.md ("Sizing").
"""

from __future__ import annotations

import math

SECONDS_PER_DAY = 86_400
DAYS_PER_MONTH = 365 / 12
HOURS_PER_MONTH = 365 * 24 / 12  # 730
MAX_SPARES = 16


def peak_rps(requests_per_day: float, peak_to_average: float) -> float:
    """Peak request rate: the daily average rate times the peak-to-average ratio."""
    return requests_per_day / SECONDS_PER_DAY * peak_to_average


def units_needed(peak: float, capacity_rps: float, headroom: float) -> int:
    """Units (boxes or replicas) so that peak x (1 + headroom) fits: ceil(peak(1+h) / capacity)."""
    if peak <= 0:
        return 0
    # Round away float noise (e.g. 3.0000000000000004) before taking the ceiling.
    return math.ceil(round(peak * (1 + headroom) / capacity_rps, 9))


def at_least_up(n_needed: int, n_total: int, unit_availability: float) -> float:
    """P(at least n_needed of n_total independent units are up): a binomial tail."""
    a = unit_availability
    return sum(
        math.comb(n_total, k) * a**k * (1 - a) ** (n_total - k)
        for k in range(n_needed, n_total + 1)
    )


def spares_for(
    n_needed: int, unit_availability: float, site_availability: float, target: float
) -> tuple[int, float]:
    """Fewest spare units that reach `target` at one site, and the availability reached.

    availability(k) = site_availability x P(at least n of n+k units up). When the site alone
    is below target no number of spares reaches it: one spare (N+1) is kept and the shortfall
    shows in the availability check.
    """
    if n_needed == 0:
        return 0, 1.0
    best = (1, site_availability * at_least_up(n_needed, n_needed + 1, unit_availability))
    for k in range(0, MAX_SPARES + 1):
        reached = site_availability * at_least_up(n_needed, n_needed + k, unit_availability)
        if reached >= target:
            return k, reached
    return best
