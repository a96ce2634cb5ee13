"""The Limiter on its own: a shared store that is down (nothing listens on its port), and the
x-ratelimit headers. No gateway process: the request path's one seam, called directly."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from edgecloud.gateway.config import parse_config
from edgecloud.gateway.errors import BudgetUnavailable, RateLimited
from edgecloud.gateway.health import CircuitBreaker, EndpointState
from edgecloud.gateway.limits import Limiter, duration, ratelimit_headers
from edgecloud.gateway.metrics import GatewayMetrics
from edgecloud.gateway.policy import PlacementDecision
from edgecloud.gateway.request import inspect_chat
from edgecloud.gateway.state import NO_LIMIT, Usage
from edgecloud.supervise import free_port

SHA = hashlib.sha256(b"k").hexdigest()
CONFIG = f"""
endpoints:
  - {{name: edge, tier: edge, url: 'http://127.0.0.1:9/v1'}}
  - {{name: cloud, tier: cloud, url: 'https://x.example/v1',
     price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
auth: {{keys: [{{name: a, sha256: {SHA}, limits: {{rpm: 4, monthly_cloud_usd: 10}}}}]}}
state: {{backend: redis, timeout_s: 0.2}}
"""
CHAT = {"model": "x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def _setup(monkeypatch: pytest.MonkeyPatch, url: str) -> tuple[Limiter, list[EndpointState]]:
    monkeypatch.setenv("EDGECLOUD_REDIS_URL", url)
    cfg = parse_config(CONFIG)
    states = [EndpointState(e, CircuitBreaker()) for e in cfg.endpoints]
    return Limiter(cfg, GatewayMetrics(states)), states


def test_redis_down_rate_limits_fall_back_to_this_replicas_share_and_cloud_pauses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    limiter, states = _setup(monkeypatch, f"redis://127.0.0.1:{free_port()}/0")
    key = limiter.config.auth.keys[0]
    facts = inspect_chat(CHAT)
    cloud_first = PlacementDecision((states[1], states[0]), "cost", "cheapest", False)
    cloud_only = PlacementDecision((states[1],), "only", "", False)

    async def run() -> list[Any]:
        await limiter.start(states)  # the first sync finds Redis down
        assert not limiter.up
        limiter.replicas = 2  # as the last heartbeat said: rpm 4 shared by 2 replicas
        out: list[Any] = []
        for _ in range(3):
            gate = limiter.gate(key, facts)
            try:
                out.append(await gate.place(cloud_first))
            except RateLimited as exc:
                out.append(exc)
        try:
            await limiter.gate(key, facts).place(cloud_only)
        except (RateLimited, BudgetUnavailable) as exc:
            out.append(exc)
        await limiter.stop()
        return out

    first, second, third, only = asyncio.run(run())
    # Budgets fail safe: the cloud is paused, the edge serves, the rule says why.
    assert [e.name for e in first.order] == ["edge"] and first.rule == "budget.unavailable"
    assert second.rule == "budget.unavailable"
    assert isinstance(third, RateLimited)  # this replica's share: 4 / 2
    assert isinstance(only, RateLimited | BudgetUnavailable)


def test_cloud_only_request_gets_503_budget_unavailable_while_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    limiter, states = _setup(monkeypatch, f"redis://127.0.0.1:{free_port()}/0")
    key = limiter.config.auth.keys[0]

    async def run() -> None:
        await limiter.start(states)
        with pytest.raises(BudgetUnavailable) as exc:
            await limiter.gate(key, inspect_chat(CHAT)).place(
                PlacementDecision((states[1],), "only", "", False))
        assert exc.value.status == 503 and exc.value.headers["retry-after"] == "1"
        await limiter.stop()

    asyncio.run(run())


def test_duration_is_openais_format() -> None:
    assert [duration(s) for s in (0.0204, 1.5, 59.9, 360, 61.2)] == [
        "21ms", "1.5s", "59.9s", "6m0s", "1m2s"]


def test_ratelimit_headers_are_openais_for_the_limits_a_key_has() -> None:
    usage = Usage(None, 12, 120, 59_950, 20, 0, 1)
    assert ratelimit_headers((10, 100), usage) == [
        (b"x-ratelimit-limit-requests", b"10"), (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-requests", b"60s"), (b"x-ratelimit-limit-tokens", b"100"),
        (b"x-ratelimit-remaining-tokens", b"0"), (b"x-ratelimit-reset-tokens", b"20ms")]
    assert ratelimit_headers((NO_LIMIT, 1000), usage) == [
        (b"x-ratelimit-limit-tokens", b"1000"), (b"x-ratelimit-remaining-tokens", b"880"),
        (b"x-ratelimit-reset-tokens", b"20ms")]
    assert ratelimit_headers((NO_LIMIT, NO_LIMIT), usage) == []
