"""The Limiter on its own: a shared store that is down (nothing listens on its port), and the
x-ratelimit headers. No gateway process: the request path's one seam, called directly."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecloud.gateway.config import parse_config
from edgecloud.gateway.errors import BudgetUnavailable, RateLimited
from edgecloud.gateway.health import CircuitBreaker, EndpointState
from edgecloud.gateway.limits import EndQueue, Gate, Limiter, duration, ratelimit_headers
from edgecloud.gateway.metrics import GatewayMetrics
from edgecloud.gateway.policy import PlacementDecision
from edgecloud.gateway.request import inspect_chat
from edgecloud.gateway.state import NO_LIMIT, Begin, End, Ends, MemoryStore, Usage, month_now
from edgecloud.supervise import free_port
from edgecloud.testing.redis_server import RedisServer, find_redis_server

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


def _setup(monkeypatch: pytest.MonkeyPatch, url: str, config: str = CONFIG
           ) -> tuple[Limiter, list[EndpointState]]:
    monkeypatch.setenv("EDGECLOUD_REDIS_URL", url)
    cfg = parse_config(config)
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


# -- request ends under a flood: nothing lost, memory bounded ------------------------------------

FLOOD_CONFIG = f"""
endpoints:
  - {{name: edge, tier: edge, url: 'http://127.0.0.1:9/v1'}}
  - {{name: cloud, tier: cloud, url: 'https://x.example/v1',
     price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
auth: {{keys: [{{name: a, sha256: {SHA},
                limits: {{tpm: 1000000000, max_parallel: 100000, monthly_cloud_usd: CAP}}}}]}}
policy: {{budget: {{monthly_cloud_usd: 1000000, hard: HARD}}}}
state: {{backend: redis, timeout_s: 2.0, prefix: flood}}  # slow CI: no false "down"
"""
COMPLETION = 3


def _flood_setup(monkeypatch: pytest.MonkeyPatch, url: str, capped: bool
                 ) -> tuple[Limiter, list[EndpointState]]:
    monkeypatch.setenv("EDGECLOUD_REDIS_URL", url)
    text = FLOOD_CONFIG.replace("HARD", "true" if capped else "false")
    text = text.replace(", monthly_cloud_usd: CAP" if not capped else "CAP",
                        "" if not capped else "1000000")
    cfg = parse_config(text)
    states = [EndpointState(e, CircuitBreaker()) for e in cfg.endpoints]
    return Limiter(cfg, GatewayMetrics(states)), states


def _cost(i: int) -> float:
    return (i % 7 + 1) * 0.0001  # 0.0001 .. 0.0007 USD: a total that float sums get exactly


async def _placed(limiter: Limiter, states: list[EndpointState], n: int) -> list[Gate]:
    """`n` requests of key a placed on the cloud-first decision (200 at a time)."""
    key = limiter.config.auth.keys[0]
    decision = PlacementDecision((states[1], states[0]), "cost", "cheapest", False)
    gates = []
    for start in range(0, n, 200):
        batch = [limiter.gate(key, inspect_chat(CHAT)) for _ in range(start, min(start + 200, n))]
        await asyncio.gather(*(g.place(decision) for g in batch))
        gates += batch
    return gates


def _finish(gates: list[Gate], first: int = 0) -> float:
    """End them all in one turn of the loop (the flood); the cost they settle."""
    total = 0.0
    for i, gate in enumerate(gates, first):
        total += _cost(i)
        gate.finish({"placement": "cloud", "cost_usd": _cost(i), "output_tokens": COMPLETION})
    return total


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, f"{what} within {timeout_s} s"
        await asyncio.sleep(0.01)


async def _shared(url: str) -> tuple[int, int]:
    """What Redis holds for key a: slots held, tokens in the window."""
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        slots = await admin.zcard("flood:key:a:par")
        tokens = int(await admin.hget("flood:key:a:w", "ts") or 0)
    finally:
        await admin.aclose()
    return slots, tokens


def test_a_flood_of_ends_on_a_live_store_loses_nothing(monkeypatch: pytest.MonkeyPatch,
                                                       redis_url: str) -> None:
    """30,000 requests end in one turn of the loop, each with a slot and a reservation in two
    capped budgets: every slot is freed, every reservation replaced by the actual cost (the
    spend is the exact total), every answer's tokens counted, and the queue merged them."""
    limiter, states = _flood_setup(monkeypatch, redis_url, capped=True)
    n = 30_000
    prompt = inspect_chat(CHAT).prompt_tokens_estimate

    async def run() -> None:
        await limiter.start(states)
        gates = await _placed(limiter, states, n)
        assert limiter.up and all(g._reserved for g in gates)
        total = _finish(gates)
        assert len(limiter._ends) == n  # none dropped, none sent yet
        batches, names = limiter._ends.held()
        assert names == 3 * n and batches <= 3 * n // 500 + 1  # a slot, two reservations each
        await _until(lambda: not limiter._ends, "the ends applied")
        spent = await limiter.store.spent(["global", "key:a"], month_now())
        assert spent == {"global": pytest.approx(total, abs=1e-9),
                         "key:a": pytest.approx(total, abs=1e-9)}
        slots, tokens = await _shared(redis_url)
        assert slots == 0 and tokens == n * (prompt + COMPLETION)
        await limiter.stop()

    asyncio.run(run())


def test_ends_held_through_an_outage_are_bounded_and_all_applied_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP) while 10,000 requests that it admitted end, then 20,000 more
    requests come and end while it is down (uncapped spend: they keep the cloud). What waits
    names only the first 10,000's slots; the rest is sums. Once Redis runs again, the first
    batch, which it may apply late as well, counts once: the spend is the exact total of all
    30,000, every slot is freed, the admitted requests' tokens are counted."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; CI installs it)")
    server = RedisServer(tmp_path / "redis").start()
    limiter, states = _flood_setup(monkeypatch, server.url, capped=False)
    first, later = 10_000, 20_000
    prompt = inspect_chat(CHAT).prompt_tokens_estimate

    async def run() -> None:
        await limiter.start(states)
        gates = await _placed(limiter, states, first)
        assert limiter.up and all(g._counted_in is limiter.store for g in gates)
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            total = _finish(gates)  # sent at once, unanswered: the store goes down
            await _until(lambda: not limiter.up, "the store seen down")
            for start in range(first, first + later, 2000):
                more = await _placed(limiter, states, 2000)
                assert all(g._counted_in is limiter.local for g in more)
                total += _finish(more, start)
            assert len(limiter._ends) == first + later
            batches, names = limiter._ends.held()
            assert names == first and batches <= first // 500 + 2
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await _until(lambda: limiter.up and not limiter._ends, "the held ends applied")
        assert (await limiter.store.spent(["global"], month_now()))["global"] == pytest.approx(
            total, abs=1e-9)
        slots, tokens = await _shared(server.url)
        assert slots == 0 and tokens == first * (prompt + COMPLETION)
        await limiter.stop()

    try:
        asyncio.run(run())
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_merged_ends_leave_the_state_that_ending_each_does() -> None:
    """The memory store: the same ends applied one by one and merged give the same spend,
    slots and tokens; a merged batch holds one sum per key and scope, and only the names."""
    ends = [End("k", f"l{i}", i % 5, ("global", "key:k"), _cost(i), "m", slot=i % 2 == 0,
                reserved=i % 3 == 0) for i in range(3000)]

    async def run(batches: list[Ends]) -> tuple[dict[str, float], int, int]:
        store = MemoryStore()
        for i in range(3000):
            await store.begin(Begin("k", NO_LIMIT, 10**9, 10**6, 1, f"l{i}", 60,
                                    {"global": NO_LIMIT, "key:k": 10**6}, 0.5, "m"))
        await store.end_many(batches)
        usage = await store.admit("k", NO_LIMIT, 10**9, 10**6, 0, "probe", 60)
        return await store.spent(["global", "key:k"], "m"), usage.parallel, usage.tokens

    one_by_one = asyncio.run(run([Ends.of([e]) for e in ends]))
    merged = Ends.of(ends)
    assert merged.count == 3000 and merged.names == 1500 + 1000 * 2
    assert len(merged.tokens) == 1 and len(merged.spend) == 2
    together = asyncio.run(run([merged]))
    assert together[1:] == one_by_one[1:] and together[1] == 1 + 1500  # the probe, odd slots
    assert together[0] == pytest.approx(one_by_one[0], abs=1e-9)


def test_the_end_queue_seals_full_batches_and_never_merges_into_one_sent() -> None:
    """EndQueue on its own: a batch is sealed at its names, at most `most` go per send, a
    batch taken (perhaps applied, its answer lost) is sent again as it was, and the open one
    waits while sealed ones do; ends without names only add to sums."""
    q = EndQueue(names=4)
    for i in range(10):  # a slot and one reservation each: two names
        q.add(End("k", f"l{i}", 1, ("global",), 0.5, "m"))
    assert len(q) == 10 and q.held() == (5, 20)
    sent = q.take(most=1)
    assert len(sent) == 1 and sent[0].count == 2 and sent[0].names == 4
    q.add(End("k", "late", 1, ("global",), 0.5, "m", slot=False, reserved=False))
    assert q.take(most=1)[0] is sent[0]  # not applied: the same batch again, unchanged
    q.done(1)
    assert [b.count for b in q.take()] == [2, 2, 2, 2]  # the open one waits for these
    q.done(4)
    last = q.take()
    assert [b.count for b in last] == [1] and last[0].names == 0
    assert last[0].tokens == {"k": 1} and last[0].spend == {("global", "m"): 0.5}
    q.done(1)
    assert not q and q.take() == []


def test_requests_cancelled_while_redis_decides_give_back_their_slots_and_reservations(
        monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """Clients that leave while their begin is on its way to Redis (cancelled before the answer,
    or after it but before the request ran on): the slots and reservations it took go back at
    once, rather than being held until their leases expire and refusing the key meanwhile."""
    limiter, states = _setup(monkeypatch, redis_url, CONFIG
                             .replace("rpm: 4,", "rpm: 1000, max_parallel: 3,")
                             .replace("state: {", "state: {prefix: gone, ")
                             .replace("timeout_s: 0.2", "timeout_s: 2.0"))  # slow CI: no "down"
    key = limiter.config.auth.keys[0]
    facts = inspect_chat(CHAT)
    cloud_first = PlacementDecision((states[1], states[0]), "cost", "cheapest", False)

    async def run() -> tuple[list[str], float]:
        await limiter.start(states)
        assert limiter.up
        gates = [limiter.gate(key, facts) for _ in range(3)]
        tasks = [asyncio.create_task(g.place(cloud_first)) for g in gates]
        await asyncio.sleep(0)  # each has sent its begin (one batch) and waits for it
        tasks[0].cancel()
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        assert isinstance(done[1], asyncio.CancelledError)
        gates[2].finish({"placement": "cloud", "cost_usd": 0.0})
        # Answered, then cancelled before the request went on: given back as well.
        late = asyncio.create_task(limiter.gate(key, facts).place(cloud_first))
        await asyncio.sleep(0)  # it has queued its begin; the write is next in the loop's queue

        def cancel_once_answered() -> None:  # runs just after that write, in the same turn
            channel = limiter.store._channel  # type: ignore[attr-defined]
            batch = channel._waiting[-1][1]  # its begin's batch, sent
            batch.add_done_callback(lambda _: late.cancel())  # after the answer is handed on

        asyncio.get_running_loop().call_soon(cancel_once_answered)
        assert isinstance((await asyncio.gather(late, return_exceptions=True))[0],
                          asyncio.CancelledError)
        for _ in range(100):  # the ends go in the next batch, off the request's path
            await asyncio.sleep(0.01)
            if not limiter._ends:
                break
        # All 3 slots free again, nothing left reserved.
        again = [limiter.gate(key, facts) for _ in range(3)]
        got = [(await g.place(cloud_first)).order[0].config.name for g in again]
        reserved = (await limiter.store.spent(["key:a"], month_now()))["key:a"]
        await limiter.stop()
        return got, reserved

    got, reserved = asyncio.run(run())
    assert got == ["cloud"] * 3
    assert reserved == pytest.approx(3 * limiter_cost(), rel=1e-6)


def limiter_cost() -> float:
    """What a cloud request of CHAT reserves at CONFIG's prices (its prompt estimate and 8
    output tokens at 1 USD per million)."""
    return (inspect_chat(CHAT).prompt_tokens_estimate + 8) / 1e6


def test_begins_whose_outcome_is_unknown_give_back_what_redis_applied_late(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP) while requests begin: each begin times out and the request goes
    on under this replica's share, but Redis applies the begins once it runs again. Their
    slots and reservations go back then, so the key is not held at its max_parallel, nor its
    budget reserved, until the leases expire (10 minutes)."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; CI installs it)")
    server = RedisServer(tmp_path / "redis").start()
    limiter, states = _setup(monkeypatch, server.url,
                             CONFIG.replace("rpm: 4,", "rpm: 1000, max_parallel: 2,"))
    key = limiter.config.auth.keys[0]
    facts = inspect_chat(CHAT)
    cloud_first = PlacementDecision((states[1], states[0]), "cost", "cheapest", False)

    async def run() -> tuple[list[str], float]:
        await limiter.start(states)
        warm = limiter.gate(key, facts)  # the request path's connection is open
        assert (await warm.place(cloud_first)).order[0].config.name == "cloud"
        warm.finish({"placement": "cloud", "cost_usd": 0.0})
        await _until(lambda: not limiter._ends, "the first end sent")
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            gates = [limiter.gate(key, facts) for _ in range(2)]
            placed = await asyncio.gather(*(g.place(cloud_first) for g in gates))
            assert not limiter.up
            assert all(p.order[0].config.name == "edge" for p in placed)  # budget paused
            for g in gates:
                g.finish({"placement": "edge"})
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)  # it applies the two begins now
        await _until(lambda: limiter.up and not limiter._ends, "the store back, ends sent")
        again = [limiter.gate(key, facts) for _ in range(2)]
        got = [(await g.place(cloud_first)).order[0].config.name for g in again]
        reserved = (await limiter.store.spent(["key:a"], month_now()))["key:a"]
        await limiter.stop()
        return got, reserved

    try:
        got, reserved = asyncio.run(run())
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()
    assert got == ["cloud", "cloud"]  # both slots free on Redis, the budget not held
    assert reserved == pytest.approx(2 * limiter_cost(), rel=1e-6)
