"""Pure parts of the fleet's defences: tokens, rate limits, transfer limits."""

from __future__ import annotations

import pytest

from edgecloud.fleet.credentials import (
    DEVICE_PREFIX,
    OperatorToken,
    RateLimiter,
    bearer,
    hash_secret,
    is_loopback,
    issue,
    same_secret,
    split_token,
)
from edgecloud.fleet.errors import TransferTooSlow
from edgecloud.fleet.transport import TransferGuard, TransferLimits


def test_tokens_split_and_verify_against_their_stored_hash() -> None:
    new = issue(DEVICE_PREFIX)
    parts = split_token(new.token, DEVICE_PREFIX)
    assert parts is not None and parts[0] == new.token_id
    assert same_secret(parts[1], new.hash) and new.hash == hash_secret(parts[1])
    assert parts[1] not in new.hash
    assert not same_secret(parts[1] + "x", new.hash)
    for bad in ("", "dev_", "dev_abc", "enr_abc.secret", "dev_.secret", "devabc.secret"):
        assert split_token(bad, DEVICE_PREFIX) is None
    assert bearer(b"Bearer abc") == "abc" and bearer(b"bearer abc") == "abc"
    assert bearer(b"Basic abc") is None and bearer(None) is None and bearer(b"Bearer \xff") is None


def test_the_operator_token_is_long_and_compared_by_hash() -> None:
    with pytest.raises(ValueError):
        OperatorToken("short")
    op = OperatorToken("a-long-enough-operator-token")
    assert op.matches("a-long-enough-operator-token")
    assert not op.matches("a-long-enough-operator-tokeN") and not op.matches(None)


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=1.0, burst=3)
    assert [limiter.take("d", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("d", 0.0) == pytest.approx(1.0)
    assert limiter.take("other", 0.0) == 0.0  # per key
    assert limiter.take("d", 1.0) == 0.0
    assert limiter.take("d", 1.0) > 0


def test_rate_limiter_forgets_idle_keys_when_full() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=2)
    limiter.take("a", 0.0)
    limiter.take("b", 0.0)
    assert limiter.take("c", 10.0) == 0.0
    assert len(limiter._buckets) <= 2


def test_a_trickle_and_an_endless_download_are_cut() -> None:
    limits = TransferLimits(deadline_s=100, min_bps=1000, window_s=10)
    guard = TransferGuard(limits, now=0.0)
    for t in range(1, 10):
        guard.feed(1, now=float(t))  # 1 byte/s: fine until the window closes
    with pytest.raises(TransferTooSlow) as slow:
        guard.feed(1, now=10.0)
    assert slow.value.reason == "download_too_slow"
    fast = TransferGuard(limits, now=0.0)
    for t in range(0, 100, 5):
        fast.feed(20_000, now=float(t))  # 4 kB/s: above the minimum rate
    with pytest.raises(TransferTooSlow) as late:
        fast.feed(20_000, now=101.0)
    assert late.value.reason == "download_deadline"


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert not is_loopback("fleet.example.com")
