"""The one backoff: doubled per failure, capped; jitter only takes off, never below the first."""

from __future__ import annotations

from edgecloud.retry import backoff_s


def test_backoff_doubles_per_failure_up_to_the_cap() -> None:
    assert [backoff_s(0.2, n, 5.0) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert [backoff_s(1.0, n, 30.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_s(0.2, 10_000, 0.5) == 0.5  # no overflow however long it failed


def test_a_cap_below_the_first_wait_keeps_the_first_wait() -> None:
    assert backoff_s(30, 3, 10) == 30


def test_jitter_takes_off_up_to_its_share_never_below_the_first_wait() -> None:
    assert backoff_s(30, 0, 300, jitter=0.5) == 30
    assert backoff_s(30, 2, 300, jitter=0.5, uniform=lambda a, b: a) == 60  # 120 halved
    assert backoff_s(30, 2, 300, jitter=0.5, uniform=lambda a, b: b) == 120
    assert backoff_s(30, 1, 300, jitter=0.9, uniform=lambda a, b: a) == 30  # floor
    waits = {backoff_s(30, 10, 300, jitter=0.5) for _ in range(50)}
    assert all(150 <= w <= 300 for w in waits) and len(waits) > 1
