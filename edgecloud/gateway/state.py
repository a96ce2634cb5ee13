"""The gateway's shared state seam: key limits and usage, budget spend, replicas' in-flight counts.

`StateStore` is the one seam; `MemoryStore` keeps it in this process (the default, and the
fallback for rate limits while a shared store is down), `RedisStore` (redis_state.py) shares it
between replicas with server-side functions (redis_state.lua). Both keep the same rules, stated
here and tested on both by tests/gateway/test_state_store.py:

- rpm and tpm are never passed over any 60 s. Here they are exact: a log of what each request
  took, with its time (requests, tokens at admission, answer tokens at the end); entries older
  than 60 s drop out. On Redis they are counted in 100 ms buckets (bounded state whatever the
  rate; a bucket counts until all of it is older than 60 s, so a refusal may last up to one
  bucket longer).
- max_parallel and budget reservations are leases with an expiry, so a replica that dies
  mid-request frees what it held after `lease_s`, not never.
- a budget reservation is refused when spent + reserved + the new estimate would pass the cap,
  so concurrent requests cannot all pass a cap that only one of them fits under.
"""

from __future__ import annotations

import calendar
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

WINDOW_MS = 60_000
NO_LIMIT = -1


class StateUnavailable(Exception):
    """The shared store cannot be reached or answered too late; the caller falls back."""


# The value types below are built on every request (Usage, Begin, End, Reserved), so they are
# plain slotted dataclasses, treated as values but not frozen: a frozen dataclass's __init__ sets
# each field through object.__setattr__, about 1 us more per object.


@dataclass(slots=True)
class Usage:
    """A key's last 60 s as an admit saw it (the request included, if admitted)."""

    limited: str | None  # None: admitted; else "requests", "tokens" or "parallel"
    requests: int  # requests in the last 60 s
    tokens: int  # tokens in the last 60 s
    requests_reset_ms: int  # until the requests of the last 60 s have all dropped out
    tokens_reset_ms: int
    wait_ms: int  # refused: until this request would fit (60 s: it never fits the limit)
    parallel: int


class _Log:
    """One limit's log of the last WINDOW_MS: (time, amount) in time order, and their sum."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[int, int]] = deque()
        self.total = 0

    def trim(self, now: int) -> None:
        while self.entries and self.entries[0][0] <= now - WINDOW_MS:
            self.total -= self.entries.popleft()[1]

    def add(self, now: int, amount: int) -> None:
        self.entries.append((now, amount))
        self.total += amount

    def reset_ms(self, now: int) -> int:
        return self.entries[-1][0] + WINDOW_MS - now if self.entries else 0

    def wait_ms(self, now: int, need: int, limit: int) -> int:
        """Until `need` more fits under `limit` as old entries drop out."""
        if need > limit:
            return WINDOW_MS
        left = self.total
        for t, amount in self.entries:
            left -= amount
            if left + need <= limit:
                return t + WINDOW_MS - now
        return WINDOW_MS


@dataclass(slots=True)
class Reserved:
    """A budget reservation's verdict: `refused` names the scope whose cap it would pass."""

    refused: str | None
    spent: dict[str, float] = field(default_factory=dict)  # spent + reserved per scope, after


@dataclass(slots=True)
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


@dataclass(slots=True)
class End:
    """What one request gives back as it ends: its parallel slot and the answer's tokens
    (key None: nothing), and its reservation settled to the actual cost (no scopes: none).
    `slot` and `reserved` say whether it holds a slot and a reservation to drop by name (a key
    without max_parallel holds no slot; spend counted while the store was down, no reservation)."""

    key: str | None
    lease: str
    tokens: int
    scopes: tuple[str, ...]
    actual: float
    month: str
    slot: bool = True
    reserved: bool = True


@dataclass(slots=True)
class Ends:
    """Many requests' ends merged into one step: per key, the slots to free (by lease) and the
    answers' tokens summed; per budget scope and month, the reservations to drop (by id) and
    the actual cost summed. Applying it leaves the state that ending each request would: the
    sums commute, and a name is dropped once whatever the order. Its size is the names it holds
    (`names`) plus one entry per key and scope, however many requests it merges (`count`)."""

    tokens: dict[str, int] = field(default_factory=dict)  # key -> answer tokens
    leases: dict[str, list[str]] = field(default_factory=dict)  # key -> slots to free
    spend: dict[tuple[str, str], float] = field(default_factory=dict)  # (scope, month) -> USD
    reservations: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # -> ids
    count: int = 0  # requests merged
    names: int = 0  # leases + reservation ids held
    seq: int = 0  # a store's number for it, so that a batch sent again is applied once

    @classmethod
    def of(cls, ends: Iterable[End]) -> Ends:
        batch = cls()
        for e in ends:
            batch.add(e)
        return batch

    def add(self, e: End) -> None:
        """Merge one request's end."""
        self.count += 1
        key = e.key
        if key is not None:
            if e.tokens:
                self.tokens[key] = self.tokens.get(key, 0) + e.tokens
            if e.slot:
                leases = self.leases.get(key)
                if leases is None:
                    leases = self.leases[key] = []
                leases.append(e.lease)
                self.names += 1
        for scope in e.scopes:
            group = (scope, e.month)
            self.spend[group] = self.spend.get(group, 0.0) + e.actual
            if e.reserved:
                rids = self.reservations.get(group)
                if rids is None:
                    rids = self.reservations[group] = []
                rids.append(e.lease)
                self.names += 1

    def usd(self) -> float:
        """The cost it settles, summed over the budgets' scopes (for a log line)."""
        return sum(self.spend.values())


class StateStore(Protocol):
    """What the gateway shares between replicas. Every method is atomic; all raise
    StateUnavailable when the store cannot answer.

    `abandoned`, set by the store's owner, takes back what a begin took that its request will
    not give back: the request was cancelled while the store decided (a client gone), or the
    begin failed without knowing whether the store applied it (a timeout). Called with the
    begin and whether it took (or may have taken) a slot and a reservation, it queues the
    matching end, so neither is held until its lease expires."""

    abandoned: Callable[[Begin, bool, bool], None] | None

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

    async def end_many(self, batches: list[Ends]) -> None:
        """release and settle for many requests at once (one round trip), batch by batch in
        order. After StateUnavailable the same batches are sent again: one that was applied
        but whose answer was lost is not applied twice."""
        ...

    async def heartbeat(self, replica: str, in_flight: dict[str, int],
                        ttl_s: float) -> tuple[dict[str, int], int]:
        """Publish this replica's in-flight counts; the other live replicas' summed per
        endpoint, and how many replicas are live (this one included)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class _MonthClock:
    """This month (UTC) as YYYY-MM, named once a month rather than on every request: the
    month's bounds are kept, and the clock only compared with them."""

    __slots__ = ("start", "end", "name")

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.name = ""

    def __call__(self) -> str:
        t = time.time()
        if self.start <= t < self.end:
            return self.name
        now = time.gmtime(t)  # what time.strftime("%Y-%m", time.gmtime()) names
        year, month = now.tm_year, now.tm_mon
        self.start = float(calendar.timegm((year, month, 1, 0, 0, 0)))
        self.end = float(calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0)))
        self.name = f"{year}-{month:02d}"
        return self.name


month_now = _MonthClock()


class _Leases:
    """A key's parallel slots: lease -> expiry (ms), and a time no later than the earliest
    expiry, so that the expired are looked for only once one may have expired."""

    __slots__ = ("expiries", "next_expiry")

    def __init__(self) -> None:
        self.expiries: dict[str, float] = {}
        self.next_expiry = math.inf

    def live(self, now: int) -> int:
        """How many are held at `now` (the expired dropped)."""
        if now >= self.next_expiry:
            first = math.inf
            for lease, expiry in list(self.expiries.items()):
                if expiry <= now:
                    del self.expiries[lease]
                elif expiry < first:
                    first = expiry
            self.next_expiry = first
        return len(self.expiries)

    def hold(self, lease: str, expiry: float) -> None:
        self.expiries[lease] = expiry
        self.next_expiry = min(self.next_expiry, expiry)


class _Budget:
    """A budget scope's month: its spend, its reservations (id -> amount, expiry in ms), their
    running sum, and a time no later than the earliest expiry, as for _Leases.

    The running sum is exact, so it stays the sum of what is held however many reservations
    came and went (a float sum would keep the rounding of each): a whole number of 2**-scale
    USD, where the scale grows to the finest amount seen (a float is n / 2**k)."""

    __slots__ = ("spend", "held", "reserved", "scale", "unit", "next_expiry")

    def __init__(self) -> None:
        self.spend = 0.0
        self.held: dict[str, tuple[float, float]] = {}
        self.reserved = 0  # the sum of held, in units of 2**-scale USD
        self.scale = 0
        self.unit = 1  # 2**scale
        self.next_expiry = math.inf

    def total(self) -> float:
        """Spent + reserved, USD."""
        return self.spend + self.reserved / self.unit  # int / int: correctly rounded

    def _units(self, usd: float) -> int:
        n, d = usd.as_integer_ratio()  # d is a power of two
        k = d.bit_length() - 1
        if k > self.scale:
            self.reserved <<= k - self.scale
            self.scale, self.unit = k, d
        return n << (self.scale - k)

    def purge(self, now: int) -> None:
        if now >= self.next_expiry:
            first = math.inf
            for rid, (amount, expiry) in list(self.held.items()):
                if expiry <= now:
                    del self.held[rid]
                    self.reserved -= self._units(amount)  # never rescales: held already
                elif expiry < first:
                    first = expiry
            self.next_expiry = first

    def hold(self, rid: str, amount: float, expiry: float) -> None:
        self.drop(rid)
        self.held[rid] = (amount, expiry)
        units = self._units(amount)  # first: it may rescale `reserved`
        self.reserved += units
        self.next_expiry = min(self.next_expiry, expiry)

    def drop(self, rid: str) -> None:
        gone = self.held.pop(rid, None)
        if gone is not None:
            self.reserved -= self._units(gone[0])  # never rescales: held already


class MemoryStore:
    """StateStore in this process: exact for one process, shared by nothing."""

    def __init__(self, clock: object = None) -> None:
        self._clock = clock if callable(clock) else time.time
        # never called: begin here decides without waiting, so no caller leaves mid-way
        self.abandoned: Callable[[Begin, bool, bool], None] | None = None
        self._logs: dict[tuple[str, str], _Log] = {}
        self._leases: dict[str, _Leases] = {}
        self._budgets: dict[tuple[str, str], _Budget] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)  # type: ignore[operator]

    def _log(self, key: str, kind: str, now: int) -> _Log:
        log = self._logs.get((key, kind))
        if log is None:
            log = self._logs[(key, kind)] = _Log()
        log.trim(now)
        return log

    async def admit(self, key: str, rpm: int, tpm: int, max_parallel: int, tokens: int,
                    lease: str, lease_s: float) -> Usage:
        now = self._now_ms()
        req, tok = self._log(key, "r", now), self._log(key, "t", now)
        leases = self._leases.get(key)
        if leases is None:
            leases = self._leases[key] = _Leases()
        par = leases.live(now)
        limited, wait = None, 0
        if rpm != NO_LIMIT and req.total + 1 > rpm:
            limited, wait = "requests", req.wait_ms(now, 1, rpm)
        elif tpm != NO_LIMIT and tok.total + tokens > tpm:
            limited, wait = "tokens", tok.wait_ms(now, tokens, tpm)
        elif max_parallel != NO_LIMIT and par + 1 > max_parallel:
            limited, wait = "parallel", 1000
        else:
            if rpm != NO_LIMIT:
                req.add(now, 1)
            if tpm != NO_LIMIT:
                tok.add(now, tokens)
            if max_parallel != NO_LIMIT:
                leases.hold(lease, now + lease_s * 1000)
                par += 1
        return Usage(limited, req.total, tok.total, req.reset_ms(now), tok.reset_ms(now), wait,
                     par)

    async def release(self, key: str, lease: str, tokens: int) -> None:
        self.release_now(key, lease, tokens)

    def release_now(self, key: str, lease: str, tokens: int) -> None:
        leases = self._leases.get(key)
        if leases is not None:
            leases.expiries.pop(lease, None)
        if tokens:
            now = self._now_ms()
            self._log(key, "t", now).add(now, tokens)

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

    async def end_many(self, batches: list[Ends]) -> None:
        for batch in batches:
            self.end_now(batch)

    def end_now(self, batch: Ends) -> None:
        """Apply a batch of ends (end_many, for the caller that holds this store)."""
        for key, leases in batch.leases.items():
            slots = self._leases.get(key)
            if slots is not None:
                for lease in leases:
                    slots.expiries.pop(lease, None)
        if batch.tokens:
            now = self._now_ms()
            for key, tokens in batch.tokens.items():
                self._log(key, "t", now).add(now, tokens)
        for (scope, month), actual in batch.spend.items():
            budget = self._budget(scope, month)
            for rid in batch.reservations.get((scope, month), ()):
                budget.drop(rid)
            budget.spend += actual  # every group with reservations has a sum, 0 or more

    def _budget(self, scope: str, month: str) -> _Budget:
        budget = self._budgets.get((scope, month))
        if budget is None:
            budget = self._budgets[(scope, month)] = _Budget()
        return budget

    def _totals(self, scopes: Iterable[str], month: str) -> dict[str, float]:
        return {s: self._budget(s, month).total() for s in scopes}

    async def reserve(self, scopes: dict[str, float], amount: float, rid: str, month: str,
                      lease_s: float) -> Reserved:
        now = self._now_ms()
        budgets = []
        for scope, cap in scopes.items():
            budget = self._budget(scope, month)
            budget.purge(now)
            if cap != NO_LIMIT and budget.total() + amount > cap + 1e-9:  # float sums
                return Reserved(scope, self._totals(scopes, month))
            budgets.append(budget)
        expiry = now + lease_s * 1000
        for budget in budgets:
            budget.hold(rid, amount, expiry)
        return Reserved(None, {s: b.total() for s, b in zip(scopes, budgets, strict=True)})

    async def settle(self, scopes: list[str], rid: str, actual: float, month: str) -> None:
        for scope in scopes:
            budget = self._budget(scope, month)
            budget.drop(rid)
            budget.spend += actual

    async def spent(self, scopes: list[str], month: str) -> dict[str, float]:
        now = self._now_ms()
        for scope in scopes:
            self._budget(scope, month).purge(now)
        return self._totals(scopes, month)

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
