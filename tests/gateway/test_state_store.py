"""The StateStore contract, run against the memory store and a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edgecloud.gateway.redis_state import RedisStore
from edgecloud.gateway.state import (
    NO_LIMIT,
    Begin,
    End,
    Ends,
    MemoryStore,
    StateStore,
    StateUnavailable,
    Usage,
)
from edgecloud.supervise import free_port
from edgecloud.testing.redis_server import RedisServer, find_redis_server

Body = Callable[[StateStore], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    """Runs a test body on a fresh store of each kind, in its own event loop."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def run(body: Body) -> None:
        async def main() -> None:
            s: StateStore = MemoryStore() if url is None else RedisStore(url, "t")
            try:
                await body(s)
            finally:
                await s.close()

        asyncio.run(main())

    return run


def test_rpm_admits_up_to_the_limit_then_refuses(store: Callable[[Body], None]) -> None:
    store(_test_rpm_admits_up_to_the_limit_then_refuses)


async def _test_rpm_admits_up_to_the_limit_then_refuses(store: StateStore) -> None:
    seen = [await store.admit("a", 5, NO_LIMIT, NO_LIMIT, 0, f"l{i}", 60) for i in range(7)]
    assert [u.limited for u in seen] == [None] * 5 + ["requests"] * 2
    assert seen[4].requests == 5 and seen[4].wait_ms == 0
    # Redis counts in 100 ms buckets: a refused request may wait up to one bucket longer.
    assert 0 < seen[5].wait_ms <= 60_100 and seen[5].requests_reset_ms > 59_000
    other = await store.admit("b", 5, NO_LIMIT, NO_LIMIT, 0, "x", 60)
    assert other.limited is None  # keys do not share a window


def test_tpm_counts_estimate_then_answer(store: Callable[[Body], None]) -> None:
    store(_test_tpm_counts_estimate_then_answer)


async def _test_tpm_counts_estimate_then_answer(store: StateStore) -> None:
    first = await store.admit("a", NO_LIMIT, 100, NO_LIMIT, 60, "l1", 60)
    assert first.limited is None and first.tokens == 60
    await store.release("a", "l1", 30)  # the answer's tokens
    second = await store.admit("a", NO_LIMIT, 100, NO_LIMIT, 20, "l2", 60)
    assert second.limited == "tokens" and second.tokens == 90
    small = await store.admit("a", NO_LIMIT, 100, NO_LIMIT, 10, "l3", 60)
    assert small.limited is None and small.tokens == 100


def test_max_parallel_leases_are_freed(store: Callable[[Body], None]) -> None:
    store(_test_max_parallel_leases_are_freed)


async def _test_max_parallel_leases_are_freed(store: StateStore) -> None:
    a = await store.admit("k", NO_LIMIT, NO_LIMIT, 2, 0, "one", 60)
    b = await store.admit("k", NO_LIMIT, NO_LIMIT, 2, 0, "two", 60)
    c = await store.admit("k", NO_LIMIT, NO_LIMIT, 2, 0, "three", 60)
    assert (a.limited, b.limited, c.limited) == (None, None, "parallel")
    await store.release("k", "one", 0)
    d = await store.admit("k", NO_LIMIT, NO_LIMIT, 2, 0, "four", 60)
    assert d.limited is None and d.parallel == 2


def test_concurrent_admits_never_pass_the_limit(store: Callable[[Body], None]) -> None:
    store(_test_concurrent_admits_never_pass_the_limit)


async def _test_concurrent_admits_never_pass_the_limit(store: StateStore) -> None:
    results = await asyncio.gather(*(store.admit("c", 10, NO_LIMIT, NO_LIMIT, 0, f"l{i}", 60)
                                     for i in range(40)))
    assert sum(u.limited is None for u in results) == 10


def test_budget_reserve_settle_and_cap(store: Callable[[Body], None]) -> None:
    store(_test_budget_reserve_settle_and_cap)


async def _test_budget_reserve_settle_and_cap(store: StateStore) -> None:
    scopes = {"global": 1.0, "key:a": NO_LIMIT}
    first = await store.reserve(scopes, 0.6, "r1", "2026-12", 60)
    assert first.refused is None and first.spent["global"] == pytest.approx(0.6)
    second = await store.reserve(scopes, 0.6, "r2", "2026-12", 60)
    assert second.refused == "global"  # 0.6 reserved + 0.6 would pass 1.0
    await store.settle(list(scopes), "r1", 0.1, "2026-12")  # the answer cost less
    assert (await store.spent(list(scopes), "2026-12"))["global"] == pytest.approx(0.1)
    third = await store.reserve(scopes, 0.6, "r3", "2026-12", 60)
    assert third.refused is None
    await store.settle(list(scopes), "r3", 0.5, "2026-12")
    await store.settle(list(scopes), "r3", 0.0, "2026-12")  # settling twice adds nothing
    spent = await store.spent(list(scopes), "2026-12")
    assert spent == {"global": pytest.approx(0.6), "key:a": pytest.approx(0.6)}
    assert (await store.spent(["global"], "2027-01"))["global"] == 0.0  # a new month


def test_concurrent_reservations_stay_under_the_cap(store: Callable[[Body], None]) -> None:
    store(_test_concurrent_reservations_stay_under_the_cap)


async def _test_concurrent_reservations_stay_under_the_cap(store: StateStore) -> None:
    got = await asyncio.gather(*(store.reserve({"g": 1.0}, 0.1, f"r{i}", "m", 60)
                                 for i in range(30)))
    assert sum(r.refused is None for r in got) == 10


def test_expired_leases_and_reservations_are_freed(store: Callable[[Body], None]) -> None:
    store(_test_expired_leases_and_reservations_are_freed)


async def _test_expired_leases_and_reservations_are_freed(store: StateStore) -> None:
    # A replica that died holding them: a lease of 0.05 s is gone soon after.
    await store.admit("k", NO_LIMIT, NO_LIMIT, 1, 0, "dead", 0.05)
    await store.reserve({"g": 1.0}, 1.0, "dead", "m", 0.05)
    await asyncio.sleep(0.1)
    assert (await store.admit("k", NO_LIMIT, NO_LIMIT, 1, 0, "new", 60)).limited is None
    assert (await store.reserve({"g": 1.0}, 1.0, "new", "m", 60)).refused is None


def test_reservations_that_came_and_went_leave_no_remainder(
        store: Callable[[Body], None]) -> None:
    store(_test_reservations_that_came_and_went_leave_no_remainder)


async def _test_reservations_that_came_and_went_leave_no_remainder(store: StateStore) -> None:
    amounts = [0.1, 0.2, 0.3, 1 / 3, 0.7, 1e-9, 2.5]
    for n in range(3):
        for i, amount in enumerate(amounts):
            assert (await store.reserve({"g": 10.0}, amount, f"r{n}.{i}", "m", 60)).refused is None
        for i in range(len(amounts)):
            await store.settle(["g"], f"r{n}.{i}", 0.0, "m")
    assert (await store.spent(["g"], "m"))["g"] == 0.0  # exactly: no rounding left behind
    # One that expires among others held: only it is dropped.
    await store.reserve({"g": 10.0}, 0.3, "short", "m", 0.05)
    await store.reserve({"g": 10.0}, 0.1, "long", "m", 60)
    await store.admit("k", NO_LIMIT, NO_LIMIT, 2, 0, "short", 0.05)
    await store.admit("k", NO_LIMIT, NO_LIMIT, 2, 0, "long", 60)
    await asyncio.sleep(0.1)
    assert (await store.spent(["g"], "m"))["g"] == pytest.approx(0.1)
    usage = await store.admit("k", NO_LIMIT, NO_LIMIT, 2, 0, "new", 60)
    assert usage.limited is None and usage.parallel == 2


def test_heartbeat_sums_other_replicas(redis_url: str) -> None:
    asyncio.run(_test_heartbeat_sums_other_replicas(redis_url))


async def _test_heartbeat_sums_other_replicas(redis_url: str) -> None:
    a, b = RedisStore(redis_url, "t"), RedisStore(redis_url, "t")
    try:
        await a.heartbeat("ra", {"edge": 3, "cloud": 1}, 2.0)
        others, live = await b.heartbeat("rb", {"edge": 2}, 2.0)
        assert others == {"edge": 3, "cloud": 1} and live == 2
        others, live = await a.heartbeat("ra", {"edge": 0}, 2.0)
        assert others == {"edge": 2} and live == 2
    finally:
        await a.close()
        await b.close()


def test_prefixes_keep_fleets_apart(redis_url: str) -> None:
    asyncio.run(_test_prefixes_keep_fleets_apart(redis_url))


async def _test_prefixes_keep_fleets_apart(redis_url: str) -> None:
    a, b = RedisStore(redis_url, "fleet-a"), RedisStore(redis_url, "fleet-b")
    try:
        assert (await a.admit("k", 1, NO_LIMIT, NO_LIMIT, 0, "1", 60)).limited is None
        assert (await b.admit("k", 1, NO_LIMIT, NO_LIMIT, 0, "1", 60)).limited is None
        assert (await a.admit("k", 1, NO_LIMIT, NO_LIMIT, 0, "2", 60)).limited == "requests"
    finally:
        await a.close()
        await b.close()


def test_unreachable_redis_raises_state_unavailable() -> None:
    asyncio.run(_test_unreachable_redis_raises_state_unavailable())


async def _test_unreachable_redis_raises_state_unavailable() -> None:
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0", "t", timeout_s=0.2)
    try:
        with pytest.raises(StateUnavailable):
            await s.admit("k", 1, NO_LIMIT, NO_LIMIT, 0, "1", 60)
        with pytest.raises(StateUnavailable):
            await s.ping()
    finally:
        await s.close()


def test_the_minute_is_exact_over_any_60_s() -> None:
    """With a clock of our own: rpm N admits N in any 60 s, whenever they came."""
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])

    def admit(tokens: int = 0) -> Usage:
        return asyncio.run(store.admit("k", 3, 100, NO_LIMIT, tokens, "l", 60))

    assert admit().limited is None
    now[0] += 50  # two more near the end of the first minute
    assert admit().limited is None and admit().limited is None
    refused = admit()
    assert refused.limited == "requests" and refused.wait_ms == 10_000  # the first drops out
    now[0] += 10
    assert admit().limited is None  # the first left the last 60 s: one slot, no more
    assert admit().limited == "requests"
    now[0] += 49.9
    assert admit().limited == "requests"  # the two of second 1050 still count
    now[0] += 0.1
    ok = admit(tokens=90)
    assert ok.limited is None and ok.requests == 2 and ok.tokens == 90
    big = admit(tokens=20)
    assert big.limited == "tokens" and big.wait_ms == 60_000  # 90 of 100 until they drop out
    assert asyncio.run(store.admit("k", NO_LIMIT, 100, NO_LIMIT, 101, "x", 60)).wait_ms == 60_000


def test_begin_and_end_take_and_give_back_in_one_step(store: Callable[[Body], None]) -> None:
    store(_test_begin_and_end_take_and_give_back_in_one_step)


async def _test_begin_and_end_take_and_give_back_in_one_step(store: StateStore) -> None:
    def begin(lease: str, amount: float, key: str | None = "k") -> Begin:
        return Begin(key, 2, 100, 1, 10, lease, 60, {"global": 1.0, "key:k": NO_LIMIT},
                     amount, "m")

    usage, reserved = await store.begin(begin("a", 0.7))
    assert usage is not None and usage.limited is None and usage.parallel == 1
    assert reserved is not None and reserved.refused is None
    # max_parallel 1: refused, and then nothing is reserved.
    usage, reserved = await store.begin(begin("b", 0.1))
    assert usage is not None and usage.limited == "parallel" and reserved is None
    await store.end_many([Ends.of([End("k", "a", 5, ("global", "key:k"), 0.2, "m")])])
    assert (await store.spent(["global", "key:k"], "m")) == {
        "global": pytest.approx(0.2), "key:k": pytest.approx(0.2)}
    # The slot is free; the cap refuses what would pass it; the key's window counted 2.
    usage, reserved = await store.begin(begin("c", 0.9))
    assert usage is not None and usage.limited is None and usage.tokens == 25
    assert reserved is not None and reserved.refused == "global"
    usage, reserved = await store.begin(begin("d", 0.5, key=None))  # a reservation alone
    assert usage is None and reserved is not None and reserved.refused is None
    assert (await store.begin(begin("e", 0.0, key=None))) == (None, None)
    await store.end_many([Ends.of([End(None, "d", 0, ("global", "key:k"), 0.0, "m"),
                                   End("k", "c", 0, (), 0.0, "m")])])
    assert (await store.spent(["global"], "m"))["global"] == pytest.approx(0.2)


def test_concurrent_begins_are_batched_and_exact(store: Callable[[Body], None]) -> None:
    store(_test_concurrent_begins_are_batched_and_exact)


async def _test_concurrent_begins_are_batched_and_exact(store: StateStore) -> None:
    got = await asyncio.gather(*(store.begin(Begin("k", 10, NO_LIMIT, NO_LIMIT, 0, f"l{i}", 60,
                                                   {"g": 0.5}, 0.1, "m"))
                                 for i in range(40)))
    admitted = [r for u, r in got if u is not None and u.limited is None]
    assert len(admitted) == 10
    assert sum(1 for r in admitted if r is not None and r.refused is None) == 5


def test_a_redis_that_forgot_its_functions_is_taught_them_again(redis_url: str) -> None:
    """After FUNCTION FLUSH (as after a restart without persistence), concurrent begins and
    ends still run: the channel loads the library and sends the calls that got "Function not
    found" once more."""
    asyncio.run(_test_forgot_functions(redis_url))


async def _test_forgot_functions(redis_url: str) -> None:
    import redis.asyncio as aioredis

    store = RedisStore(redis_url, "flush")
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.function_flush()
        got = await asyncio.gather(*(store.begin(Begin("k", 100, NO_LIMIT, 5, 0, f"l{i}", 60,
                                                       {"g": NO_LIMIT}, 0.1, "m"))
                                     for i in range(8)))
        assert [u.limited if u else "?" for u, _ in got] == [None] * 5 + ["parallel"] * 3
        await admin.function_flush()
        await store.end_many([Ends.of([End("k", f"l{i}", 0, ("g",), 0.05, "m")])
                              for i in range(5)])
        assert (await store.spent(["g"], "m"))["g"] == pytest.approx(0.25)
        usage, _ = await store.begin(Begin("k", 100, NO_LIMIT, 5, 0, "again", 60, {}, 0.0, "m"))
        assert usage is not None and usage.limited is None and usage.parallel == 1
    finally:
        await store.close()
        await admin.aclose()


def test_a_dropped_connection_fails_one_batch_then_is_opened_again(redis_url: str) -> None:
    """Redis drops the request path's connection (CLIENT KILL, as a failover would): the calls
    in flight fail as StateUnavailable, quickly, and the next batch opens a new connection."""
    asyncio.run(_test_dropped_connection(redis_url))


async def _test_dropped_connection(redis_url: str) -> None:
    import redis.asyncio as aioredis

    store = RedisStore(redis_url, "drop", timeout_s=0.5)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        b = Begin("k", 1000, NO_LIMIT, NO_LIMIT, 0, "a", 60, {}, 0.0, "m")
        assert (await store.begin(b))[0] is not None
        await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        outcomes = []
        for i in range(3):
            try:
                u, _ = await store.begin(Begin("k", 1000, NO_LIMIT, NO_LIMIT, 0, f"b{i}", 60, {},
                                               0.0, "m"))
                outcomes.append(u is not None and u.limited is None)
            except StateUnavailable:
                outcomes.append(False)
        assert outcomes[-1] is True and outcomes.count(False) <= 1
    finally:
        await store.close()
        await admin.aclose()


def test_spend_kept_by_the_first_version_still_counts(redis_url: str) -> None:
    """A gateway upgraded mid-month keeps the month's spend that the first version of the
    functions kept (a float `spent` field in USD), and adds to it in nano-USD."""
    asyncio.run(_test_first_version_spend(redis_url))


async def _test_first_version_spend(redis_url: str) -> None:
    import redis.asyncio as aioredis

    store = RedisStore(redis_url, "upgrade")
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.hset("upgrade:budget:global:m:s", "spent", "0.75")
        await store.settle(["global"], "r1", 0.125, "m")
        assert (await store.spent(["global"], "m"))["global"] == pytest.approx(0.875)
        refused = await store.reserve({"global": 1.0}, 0.2, "r2", "m", 60)
        assert refused.refused == "global"
    finally:
        await store.close()
        await admin.aclose()


def test_the_library_and_its_functions_carry_one_version() -> None:
    """A change to the functions bumps the library's number in both places, so that replicas
    of two versions can share a Redis during a rollout (each calls its own functions)."""
    import re

    from edgecloud.gateway.redis_state import _FN, LIBRARY

    assert LIBRARY.splitlines()[0] == f"#!lua name={_FN[:-1]}"
    names = re.findall(r"register_function\('([a-z0-9_]+)'", LIBRARY)
    assert len(names) == 8 and all(n.startswith(_FN) for n in names)


def test_a_busy_key_keeps_buckets_not_one_entry_per_request(redis_url: str) -> None:
    """2,000 requests in well under a second: Redis holds a few 100 ms buckets for the key, not
    a log of 2,000 entries, and everything it holds expires once the key falls idle."""
    asyncio.run(_test_bounded_state(redis_url))


async def _test_bounded_state(redis_url: str) -> None:
    import time

    import redis.asyncio as aioredis

    store = RedisStore(redis_url, "busy")
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        t0 = time.monotonic()
        for start in range(0, 2000, 200):
            got = await asyncio.gather(*(
                store.begin(Begin("k", 1_000_000, 1_000_000_000, NO_LIMIT, 7, f"l{i}", 60, {},
                                  0.0, "m")) for i in range(start, start + 200)))
            assert all(u is not None and u.limited is None for u, _ in got)
        elapsed_buckets = int((time.monotonic() - t0) / 0.1) + 2
        last = got[-1][0]
        assert last is not None and last.requests == 2000 and last.tokens == 2000 * 7
        buckets = await admin.zcard("busy:key:k:b")
        assert 1 <= buckets <= elapsed_buckets
        assert await admin.hlen("busy:key:k:w") <= 2 * buckets + 4
        for name in ("busy:key:k:w", "busy:key:k:b"):
            assert 0 < await admin.pttl(name) <= 60_000 + 100 + 2_000
    finally:
        await store.close()
        await admin.aclose()


def test_a_redis_that_stops_answering_fails_the_calls_in_time_then_serves_again(
        tmp_path: Path) -> None:
    """redis-server frozen (SIGSTOP, as a stalled host): the calls waiting on it fail as
    StateUnavailable after about the timeout, not never; once it runs again, so do the calls."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; CI installs it)")
    server = RedisServer(tmp_path / "redis").start()
    try:
        asyncio.run(_test_frozen_redis(server))
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


async def _test_frozen_redis(server: RedisServer) -> None:
    import time

    store = RedisStore(server.url, "frozen", timeout_s=0.3)

    def begin(lease: str) -> Begin:
        return Begin("k", 1000, NO_LIMIT, NO_LIMIT, 0, lease, 60, {}, 0.0, "m")

    try:
        assert (await store.begin(begin("a")))[0] is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        got = await asyncio.gather(*(store.begin(begin(f"b{i}")) for i in range(5)),
                                   return_exceptions=True)
        waited = time.monotonic() - t0
        assert all(isinstance(g, StateUnavailable) for g in got), got
        assert waited < 3.0  # the timeout (0.3 s) and the loop's slack, far from a hang
        os.kill(server.proc.pid, signal.SIGCONT)
        await store.ping()
        usage, _ = await store.begin(begin("c"))
        assert usage is not None and usage.limited is None
    finally:
        await store.close()


def test_a_merged_batch_of_ends_frees_every_slot_and_settles_every_reservation(
        store: Callable[[Body], None]) -> None:
    store(_test_merged_batch)


async def _test_merged_batch(store: StateStore) -> None:
    n = 1200  # more names than one unpack takes in the functions
    scopes = {"g": 1000.0, "key:k": NO_LIMIT}
    got = await asyncio.gather(*(store.begin(Begin("k", NO_LIMIT, 10**6, n, 2, f"l{i}", 60,
                                                   scopes, 0.25, "m")) for i in range(n)))
    assert all(r is not None and r.refused is None for _, r in got)
    assert (await store.spent(["g"], "m"))["g"] == pytest.approx(0.25 * n)
    batch = Ends.of(End("k", f"l{i}", 3, ("g", "key:k"), 0.125, "m") for i in range(n))
    assert batch.names == 3 * n and batch.tokens == {"k": 3 * n}
    await store.end_many([batch])
    assert (await store.spent(["g", "key:k"], "m")) == {"g": pytest.approx(0.125 * n),
                                                       "key:k": pytest.approx(0.125 * n)}
    usage = await store.admit("k", NO_LIMIT, 10**6, 1, 0, "probe", 60)
    assert usage.limited is None and usage.parallel == 1 and usage.tokens == 5 * n


def test_a_batch_of_ends_sent_again_is_applied_once(redis_url: str) -> None:
    """A batch whose answer was lost is sent again as it was: Redis applies it once. Another
    writer's batch of the same number is its own."""
    asyncio.run(_test_sent_again(redis_url))


async def _test_sent_again(redis_url: str) -> None:
    store, other = RedisStore(redis_url, "again"), RedisStore(redis_url, "again")
    try:
        batch = Ends.of([End(None, "x", 0, ("g",), 0.5, "m")])
        await store.end_many([batch])
        await store.end_many([batch])  # as after a timeout: the same batch, the same number
        later = Ends.of([End(None, "y", 0, ("g",), 0.25, "m")])
        await store.end_many([batch, later])
        await other.end_many([Ends.of([End(None, "z", 0, ("g",), 1.0, "m")])])
        assert (await store.spent(["g"], "m"))["g"] == pytest.approx(1.75)
    finally:
        await store.close()
        await other.close()


def test_a_batch_of_begins_decides_as_one_call_each_would(redis_url: str) -> None:
    """Begins that arrive together go to Redis as one batch; each is decided against what the
    ones before it in the batch took, as the memory store decides one after the other: the same
    admissions, counts, slots, refusals and budget totals, over keys with each kind of limit,
    shared and separate budgets, and caps that run out mid-batch."""
    asyncio.run(_test_batch_as_sequence(redis_url))


async def _test_batch_as_sequence(redis_url: str) -> None:
    import random

    rng = random.Random(7)
    limits = {"r": (20, NO_LIMIT, NO_LIMIT), "t": (NO_LIMIT, 200, NO_LIMIT),
              "p": (NO_LIMIT, NO_LIMIT, 20), "all": (30, 300, 25)}
    begins = []
    for i in range(300):
        key = rng.choice([*limits, None])
        rpm, tpm, par = limits[key] if key is not None else (NO_LIMIT, NO_LIMIT, NO_LIMIT)
        scopes = rng.choice([{}, {"g": 8.0}, {"g": 8.0, f"key:{key}": 0.5},
                             {"g": 8.0, "other": NO_LIMIT}])
        amount = rng.choice([0.0, 0.1, 0.3])
        begins.append(Begin(key, rpm, tpm, par, rng.randint(0, 15), f"l{i}", 60, scopes,
                            amount, "m"))
    redis_store, memory = RedisStore(redis_url, "seq"), MemoryStore()
    try:
        batched = await asyncio.gather(*(redis_store.begin(b) for b in begins))
        one_by_one = [await memory.begin(b) for b in begins]
        for b, (u1, r1), (u2, r2) in zip(begins, batched, one_by_one, strict=True):
            assert (u1 is None) == (u2 is None), b
            if u1 is not None and u2 is not None:
                assert (u1.limited, u1.requests, u1.tokens, u1.parallel) == (
                    u2.limited, u2.requests, u2.tokens, u2.parallel), b
            assert (r1 is None) == (r2 is None), b
            if r1 is not None and r2 is not None:
                assert r1.refused == r2.refused, b
                assert r1.spent == pytest.approx(r2.spent), b
        refused = [r.refused for _, r in batched if r is not None]
        assert None in refused and "g" in refused and any(
            x is not None and x.startswith("key:") for x in refused)
        limited = {u.limited for u, _ in batched if u is not None}
        assert limited == {None, "requests", "tokens", "parallel"}
        names = ["g", "other", *(f"key:{k}" for k in limits)]
        assert await redis_store.spent(names, "m") == pytest.approx(
            await memory.spent(names, "m"))
    finally:
        await redis_store.close()
        await memory.close()


def test_everything_the_store_writes_expires(redis_url: str) -> None:
    """No key under the prefix lives forever, whatever limits a key has: a window and slots
    expire once the key falls idle, a budget's month after its month, a writer's mark too."""
    asyncio.run(_test_everything_expires(redis_url))


async def _test_everything_expires(redis_url: str) -> None:
    import redis.asyncio as aioredis

    store = RedisStore(redis_url, "ttl")
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        shapes = {"r": (5, NO_LIMIT, NO_LIMIT), "t": (NO_LIMIT, 100, NO_LIMIT),
                  "p": (NO_LIMIT, NO_LIMIT, 4)}
        for key, (rpm, tpm, par) in shapes.items():
            await store.begin(Begin(key, rpm, tpm, par, 3, f"{key}1", 60, {"g": 5.0}, 0.1, "m"))
            await store.end_many([Ends.of([End(key, f"{key}1", 2, ("g",), 0.05, "m")])])
        names = [n async for n in admin.scan_iter("ttl:*")]
        assert "ttl:key:p:w" in names and "ttl:key:r:w" in names  # p: its refresh mark
        for name in names:
            assert await admin.pttl(name) > 0, name
    finally:
        await store.close()
        await admin.aclose()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_begins_and_ends_over_tls(tmp_path: Path, loop: str) -> None:
    """rediss://: the channel takes the TLS transport over as it does a plain one, on either
    event loop the gateway may run (the gateway runs uvloop)."""
    if find_redis_server() is None:
        pytest.skip("redis-server not installed")
    server = RedisServer(tmp_path / "tls", tls=True).start()
    try:
        run = asyncio.run
        if loop == "uvloop":
            import uvloop

            run = uvloop.run
        run(_test_over_tls(server.url))
    finally:
        server.stop()


async def _test_over_tls(url: str) -> None:
    assert url.startswith("rediss://")
    store = RedisStore(url, "tls")
    try:
        got = await asyncio.gather(*(store.begin(Begin("k", 10, NO_LIMIT, 3, 0, f"l{i}", 60,
                                                       {"g": 1.0}, 0.25, "m"))
                                     for i in range(12)))
        admitted = [r for u, r in got if u is not None and u.limited is None]
        assert len(admitted) == 3  # max_parallel 3
        assert sum(1 for r in admitted if r is not None and r.refused is None) == 3
        await store.end_many([Ends.of(End("k", f"l{i}", 0, ("g",), 0.1, "m")
                                      for i in range(3))])
        assert (await store.spent(["g"], "m"))["g"] == pytest.approx(0.3)
        usage, _ = await store.begin(Begin("k", 10, NO_LIMIT, 3, 0, "again", 60, {}, 0.0, "m"))
        assert usage is not None and usage.limited is None and usage.parallel == 1
    finally:
        await store.close()


def test_a_reply_begins_cannot_read_fails_the_begins_not_the_requests(redis_url: str) -> None:
    """A Redis whose `begins` answers something else (another build of the library under the
    same name, say): every begin of the batch fails as the store being unavailable (the
    gateway falls back), none hangs, none raises anything else."""
    asyncio.run(_test_unreadable_reply(redis_url))


async def _test_unreadable_reply(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from edgecloud.gateway.redis_state import _FN

    admin = aioredis.Redis.from_url(redis_url)
    store = RedisStore(redis_url, "odd")
    try:
        await admin.function_load(
            f"#!lua name={_FN[:-1]}\n"
            f"redis.register_function('{_FN}begins', function(keys, args) return {{1}} end)",
            replace=True)
        got = await asyncio.wait_for(asyncio.gather(
            *(store.begin(Begin("k", 10, NO_LIMIT, 2, 0, f"l{i}", 60, {"g": 1.0}, 0.1, "m"))
              for i in range(3)), return_exceptions=True), 5)
        assert all(isinstance(r, StateUnavailable) for r in got), got
    finally:
        await admin.function_flush()  # the next test's store loads the real library again
        await store.close()
        await admin.aclose()
