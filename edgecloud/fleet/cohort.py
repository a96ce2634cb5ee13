"""Rollout cohorts: a stable hash of the device id decides who takes a staged version.

The bucket of a device is the same on the agent and on the server, is stable across restarts
and grows monotonically with the percentage: a device in the 5% cohort is also in the 25% one.
"""

from __future__ import annotations

import hashlib

_SCALE = 10_000  # buckets of 0.01 percent


def cohort_bucket(device_id: str, salt: str) -> float:
    """The device's position in [0, 100) for rollouts salted with `salt` (model name)."""
    digest = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % (100 * _SCALE)) / _SCALE


def in_cohort(device_id: str, salt: str, percent: float) -> bool:
    """True when the device belongs to the first `percent` percent of the fleet."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    return cohort_bucket(device_id, salt) < percent
