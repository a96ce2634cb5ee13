"""How often devices poll, and how the server slows them down (pure).

A fleet of 100,000 devices polling every 30 s is 3,300 requests a second for nothing; the
anchors poll far less often: Mender's client checks for updates every 1,800 s by default
(UpdatePollIntervalSeconds) and balena's supervisor every 10 minutes at least. Every wait is
spread by a random jitter so that devices that started together (a site after a power cut)
do not poll together forever. The server may answer a report with NEXT_POLL_HEADER, seconds
until the device should come back: an operator's fleet-wide interval, or longer when the
server's database writes lag (shedding load), and the agent follows it.
"""

from __future__ import annotations

import random

DEFAULT_POLL_S = 1800.0  # Mender's default update poll; balena: >= 600 s
DEFAULT_JITTER = 0.2  # each wait is the interval times a uniform factor in [0.8, 1.2]
NEXT_POLL_HEADER = "x-edgecloud-next-poll"
MIN_HINT_S, MAX_HINT_S = 1.0, 86400.0  # what an agent accepts from a server's hint
MAX_SHED_FACTOR = 8.0


def jittered(
    interval_s: float, jitter: float = DEFAULT_JITTER, rng: random.Random | None = None
) -> float:
    """`interval_s` spread by +-`jitter` (a fraction), never below 0."""
    draw = (rng or random).uniform(1.0 - jitter, 1.0 + jitter)
    return max(0.0, interval_s * draw)


def next_poll_hint(
    configured_s: float | None, write_lag_s: float, target_lag_s: float
) -> float | None:
    """Seconds the server asks a device to wait before its next poll, or None to leave it to
    the device: the configured fleet interval, stretched in proportion when the group writes
    lag behind `target_lag_s` (at most MAX_SHED_FACTOR times)."""
    if write_lag_s <= target_lag_s:
        return configured_s
    factor = min(MAX_SHED_FACTOR, write_lag_s / target_lag_s)
    return (configured_s or DEFAULT_POLL_S) * factor


def accept_hint(value: str | None) -> float | None:
    """A server's hint as an agent takes it: a number of seconds, clamped; None if absent or
    not a number."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds != seconds:  # NaN
        return None
    return min(MAX_HINT_S, max(MIN_HINT_S, seconds))
