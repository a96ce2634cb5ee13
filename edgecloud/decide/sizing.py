"""Capacity sizing: how many boxes or replicas a peak needs, and spares for availability.

Pure arithmetic; every formula is in docs/decide.md ("Sizing").
"""

from __future__ import annotations

import math

from pydantic import BaseModel

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


class VisionSizing(BaseModel):
    """The edge sized for a workload's screenshots, from a screenshot bench of one box."""

    images_per_request: float  # in the bench's requests
    image_ms: float | None  # server-reported engine time per image (encode + image prefill)
    image_ms_per_request: float | None  # image_ms x images per request
    first_token_ms: float | None  # client-seen TTFT p50 at the lowest level: the whole prompt
    requests_per_s_per_box: float  # screenshot requests/s one box serves within the SLO
    screenshot_peak_rps: float  # the workload's screenshot requests at peak
    boxes_needed: int  # before spares, with the workload's headroom
    source: str  # the bench file


def size_vision(
    *,
    images_per_request: float,
    image_ms: float | None,
    first_token_ms: float | None,
    requests_per_s_per_box: float,
    requests_per_day: float,
    peak_to_average: float,
    screenshot_share: float,
    headroom: float,
    source: str,
) -> VisionSizing:
    """Boxes for the screenshot requests alone: ceil(peak x share x (1 + h) / box rate)."""
    peak = peak_rps(requests_per_day, peak_to_average) * screenshot_share
    return VisionSizing(
        images_per_request=images_per_request,
        image_ms=image_ms,
        image_ms_per_request=image_ms * images_per_request if image_ms is not None else None,
        first_token_ms=first_token_ms,
        requests_per_s_per_box=requests_per_s_per_box,
        screenshot_peak_rps=peak,
        boxes_needed=units_needed(peak, requests_per_s_per_box, headroom),
        source=source,
    )


def vision_lines(v: VisionSizing) -> list[tuple[str, str]]:
    """The screenshot sizing as (label, value) rows, for the terminal and the HTML report."""

    def ms(x: float | None, none: str) -> str:
        return f"{x:,.0f} ms" if x is not None else none

    return [
        ("images per request", f"{v.images_per_request:g} (as benched)"),
        ("image encode + prefill", ms(v.image_ms_per_request, "not reported by the server")),
        ("first token (whole prompt), p50", ms(v.first_token_ms, "not measured")),
        ("screenshot requests/s per box", f"{v.requests_per_s_per_box:.3g}"),
        ("screenshot requests/s at peak", f"{v.screenshot_peak_rps:.3g}"),
        ("boxes for the screenshots", f"{v.boxes_needed} (before spares)"),
    ]
