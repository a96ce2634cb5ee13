"""The gateway's shared state seam: key limits and usage, budget spend, replicas' in-flight counts.

`StateStore` is the one seam; `MemoryStore` keeps it in this process (the default, and the
fallback for rate limits while a shared store is down), `RedisStore` (redis_state.py) shares it
between replicas with server-side scripts. Both implement the same rules, written once here as
pure functions:

- rpm and tpm use a sliding window of 60 s approximated from two fixed windows (the previous
  one weighted by how much of it still overlaps): O(1) state per key and limit, and within a few
  percent of an exact log for steady traffic.
- max_parallel and budget reservations are leases with an expiry, so a replica that dies
  mid-request frees what it held after `lease_s`, not never.
- a budget reservation is refused when spent + reserved + the new estimate would pass the cap,
  so concurrent requests cannot all pass a cap that only one of them fits under.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

WINDOW_MS = 60_000
NO_LIMIT = -1


class StateUnavailable(Exception):
    """The shared store cannot be reached or answered too late; the caller falls back."""


@dataclass(slots=True, frozen=True)
class Usage:
    """A key's window counts as an admit saw them (after counting the request, if admitted)."""

    limited: str | None  # None: admitted; else "requests", "tokens" or "parallel"
    req_prev: int
    req_curr: int
    tok_prev: int
    tok_curr: int
    elapsed_ms: int  # into the current window
    parallel: int


def window_used(prev: int, curr: int, elapsed_ms: int) -> float:
    """The sliding-window estimate of use over the last 60 s."""
    return prev * (1.0 - elapsed_ms / WINDOW_MS) + curr


def window_admits(prev: int, curr: int, elapsed_ms: int, cost: int, limit: int) -> bool:
    return limit == NO_LIMIT or window_used(prev, curr, elapsed_ms) + cost <= limit


def window_wait_s(prev: int, curr: int, elapsed_ms: int, cost: int, limit: int) -> float:
    """Seconds until `cost` more fits under `limit` if nothing else arrives (0 if it fits now)."""
    if limit == NO_LIMIT or window_admits(prev, curr, elapsed_ms, cost, limit):
        return 0.0
    left_ms = WINDOW_MS - elapsed_ms
    room = limit - cost - curr  # what the previous window's weighted share must fall to
    if prev > 0 and room >= 0:
        # prev * (1 - (elapsed + t) / W) <= room
        t = (1.0 - room / prev) * WINDOW_MS - elapsed_ms
        if t <= left_ms:
            return max(t, 0.0) / 1000.0 + 0.001
    # After the roll, the current window becomes the previous: curr * (1 - e / W) + cost <= limit.
    room = limit - cost
    if room < 0:
        return WINDOW_MS / 1000.0
    e = (1.0 - room / curr) * WINDOW_MS if curr > 0 else 0.0
    return (left_ms + max(e, 0.0)) / 1000.0 + 0.001


def window_reset_s(prev: int, curr: int, elapsed_ms: int) -> float:
    """Seconds until the window's use is back to zero if nothing else arrives."""
    left_ms = WINDOW_MS - elapsed_ms
    if curr > 0:
        return (left_ms + WINDOW_MS) / 1000.0
    if prev > 0:
        return left_ms / 1000.0
    return 0.0


@dataclass(slots=True, frozen=True)
class Reserved:
    """A budget reservation's verdict: `refused` names the scope whose cap it would pass."""

    refused: str | None
    spent: dict[str, float] = field(default_factory=dict)  # spent + reserved per scope, after


@dataclass(slots=True, frozen=True)
class Begin:
    """What one request takes as it starts: a key's rate limits (key None: none) and a budget
    reservation (amount 0 or no scopes: none), in one atomic step."""

    key: str | None
    rpm: int
    tpm: int
    max_parallel: int
    tokens: int
    lease: str
    lease_s: float
    scopes: dict[str, float]  # scope -> cap (NO_LIMIT: counted, not capped)
    amount: float
    month: str


@dataclass(slots=True, frozen=True)
class End:
    """What one request gives back as it ends: its parallel slot and the answer's tokens
    (key None: nothing), and its reservation settled to the actual cost (no scopes: none)."""

    key: str | None
    lease: str
    tokens: int
    scopes: tuple[str, ...]
    actual: float
    month: str


class StateStore(Protocol):
    """What the gateway shares between replicas. Every method is atomic; all raise
    StateUnavailable when the store cannot answer."""

    async def admit(self, key: str, rpm: int, tpm: int, max_parallel: int, tokens: int,
                    lease: str, lease_s: float) -> Usage:
        """Count one request of `tokens` (estimated) against a key's limits, or refuse it."""
        ...

    async def release(self, key: str, lease: str, tokens: int) -> None:
        """The request ended: free its parallel slot; add `tokens` (the answer's) to tpm."""
        ...

    async def reserve(self, scopes: dict[str, float], amount: float, rid: str, month: str,
                      lease_s: float) -> Reserved:
        """Reserve `amount` USD in every scope (scope -> cap, NO_LIMIT for none), or none."""
        ...

    async def settle(self, scopes: list[str], rid: str, actual: float, month: str) -> None:
        """Drop reservation `rid` (if held) and add the actual cost to every scope's spend."""
        ...

    async def spent(self, scopes: list[str], month: str) -> dict[str, float]:
        """Spent + reserved this month, per scope."""
        ...

    async def begin(self, b: Begin) -> tuple[Usage | None, Reserved | None]:
        """admit then (if admitted) reserve, as one step; None for a part not asked for."""
        ...

    async def end_many(self, ends: list[End]) -> None:
        """release and settle for many requests at once (one round trip)."""
        ...

    async def heartbeat(self, replica: str, in_flight: dict[str, int],
                        ttl_s: float) -> tuple[dict[str, int], int]:
        """Publish this replica's in-flight counts; the other live replicas' summed per
        endpoint, and how many replicas are live (this one included)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def month_now() -> str:
    return time.strftime("%Y-%m", time.gmtime())


class MemoryStore:
    """StateStore in this process: exact for one process, shared by nothing."""

    def __init__(self, clock: object = None) -> None:
        self._clock = clock if callable(clock) else time.time
        self._windows: dict[tuple[str, str, int], int] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._spend: dict[tuple[str, str], float] = {}
        self._reservations: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)  # type: ignore[operator]

    def _counts(self, key: str, kind: str, n: int) -> tuple[int, int]:
        return self._windows.get((key, kind, n - 1), 0), self._windows.get((key, kind, n), 0)

    def _add(self, key: str, kind: str, n: int, amount: int) -> None:
        k = (key, kind, n)
        self._windows[k] = self._windows.get(k, 0) + amount
        for old in [w for w in self._windows if w[0] == key and w[1] == kind and w[2] < n - 1]:
            del self._windows[old]

    async def admit(self, key: str, rpm: int, tpm: int, max_parallel: int, tokens: int,
                    lease: str, lease_s: float) -> Usage:
        now = self._now_ms()
        n, elapsed = divmod(now, WINDOW_MS)
        rp, rc = self._counts(key, "r", n)
        tp, tc = self._counts(key, "t", n)
        leases = self._leases.setdefault(key, {})
        for k in [k for k, exp in leases.items() if exp <= now]:
            del leases[k]
        par = len(leases)
        limited = None
        if not window_admits(rp, rc, elapsed, 1, rpm):
            limited = "requests"
        elif not window_admits(tp, tc, elapsed, tokens, tpm):
            limited = "tokens"
        elif max_parallel != NO_LIMIT and par + 1 > max_parallel:
            limited = "parallel"
        else:
            if rpm != NO_LIMIT:
                self._add(key, "r", n, 1)
                rc += 1
            if tpm != NO_LIMIT:
                self._add(key, "t", n, tokens)
                tc += tokens
            if max_parallel != NO_LIMIT:
                leases[lease] = now + lease_s * 1000
                par += 1
        return Usage(limited, rp, rc, tp, tc, elapsed, par)

    async def release(self, key: str, lease: str, tokens: int) -> None:
        self.release_now(key, lease, tokens)

    def release_now(self, key: str, lease: str, tokens: int) -> None:
        self._leases.get(key, {}).pop(lease, None)
        if tokens:
            self._add(key, "t", self._now_ms() // WINDOW_MS, tokens)

    async def begin(self, b: Begin) -> tuple[Usage | None, Reserved | None]:
        usage = None
        if b.key is not None:
            usage = await self.admit(b.key, b.rpm, b.tpm, b.max_parallel, b.tokens, b.lease,
                                     b.lease_s)
            if usage.limited is not None:
                return usage, None
        if not b.scopes or b.amount <= 0:
            return usage, None
        return usage, await self.reserve(b.scopes, b.amount, b.lease, b.month, b.lease_s)

    async def end_many(self, ends: list[End]) -> None:
        for e in ends:
            if e.key is not None:
                self.release_now(e.key, e.lease, e.tokens)
            if e.scopes:
                await self.settle(list(e.scopes), e.lease, e.actual, e.month)

    def _purge(self, scope: str, month: str, now: int) -> dict[str, tuple[float, float]]:
        held = self._reservations.setdefault((scope, month), {})
        for rid in [r for r, (_, exp) in held.items() if exp <= now]:
            del held[rid]
        return held

    def _total(self, scope: str, month: str) -> float:
        held = self._reservations.get((scope, month), {})
        return self._spend.get((scope, month), 0.0) + sum(a for a, _ in held.values())

    async def reserve(self, scopes: dict[str, float], amount: float, rid: str, month: str,
                      lease_s: float) -> Reserved:
        now = self._now_ms()
        for scope, cap in scopes.items():
            self._purge(scope, month, now)
            if cap != NO_LIMIT and self._total(scope, month) + amount > cap + 1e-9:  # float sums
                return Reserved(scope, {s: self._total(s, month) for s in scopes})
        for scope in scopes:
            self._reservations[(scope, month)][rid] = (amount, now + lease_s * 1000)
        return Reserved(None, {s: self._total(s, month) for s in scopes})

    async def settle(self, scopes: list[str], rid: str, actual: float, month: str) -> None:
        for scope in scopes:
            self._reservations.get((scope, month), {}).pop(rid, None)
            self._spend[(scope, month)] = self._spend.get((scope, month), 0.0) + actual

    async def spent(self, scopes: list[str], month: str) -> dict[str, float]:
        now = self._now_ms()
        for scope in scopes:
            self._purge(scope, month, now)
        return {s: self._total(s, month) for s in scopes}

    async def heartbeat(self, replica: str, in_flight: dict[str, int],
                        ttl_s: float) -> tuple[dict[str, int], int]:
        return {}, 1

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def scaled(limit: int | None, replicas: int) -> int:
    """A shared limit's share for one replica while the shared store is down (at least 1)."""
    if limit is None:
        return NO_LIMIT
    return max(1, math.floor(limit / max(replicas, 1)))
