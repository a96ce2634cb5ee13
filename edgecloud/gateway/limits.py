"""Keys as tenants, and the budget: what the request path asks before and after a request.

The request path calls `Limiter.admit` once (rate limits: 429 or a `Gate`), `Gate.place` on
each placement (budget: reserve the estimated cloud cost, or keep the request on the edge), and
`Gate.finish` at the end (settle to the actual cost, free the parallel slot, count the answer's
tokens). The state lives behind `StateStore` (state.py): this process, or a shared Redis.

When the shared store is down (a call failed or took longer than `state.timeout_s`):
- rate limits fall back to this replica's share (the limit divided by the live replicas last
  seen), in memory;
- a capped budget (`policy.budget.hard`, a key's `monthly_cloud_usd`) pauses the cloud: spend
  that cannot be reserved is never sent; an uncapped budget keeps the cloud, and the spend is
  settled once the store is back;
- a background task pings the store every 0.1 s, so the shared state is used again within
  about that of its return, and settlements held meanwhile are sent then.

Request ends (a slot freed, the answer's tokens, the spend settled) never wait on the request
path and are never dropped: `EndQueue` merges them as they come, per key (tokens summed, the
leases of the slots to free named) and per budget scope and month (USD summed, the
reservations to drop named), and the store applies a merged batch as it would each end. What a
batch holds is one entry per key and scope plus the names, and names are only taken while the
store answers: while it is down no shared slot or reservation is taken, so the ends held
through an outage of any length and rate are bounded by what was in flight when it began plus
the sums, not by the requests that ended meanwhile. While it answers, what waited goes at
once, up to BATCHES_PER_SEND batches a round trip (some 2,700 requests' ends in about 6 ms of
Redis), far more than the begins it has to answer first let end in that time. Merging
was chosen over back-pressure at admission (a begin waiting for the queue to drain): it keeps
the request path free of a wait and of a new way to fail, and costs a few dict updates per end.
A batch sent again after its answer was lost is applied once (redis_state numbers them).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import os
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from edgecloud.api.asgi import Message, Send
from edgecloud.gateway.config import ApiKeyConfig, GatewayConfig, KeyLimits
from edgecloud.gateway.errors import (
    BudgetUnavailable,
    ConfigError,
    InsufficientQuota,
    RateLimited,
)
from edgecloud.gateway.policy import PlacementDecision
from edgecloud.gateway.request import RequestFacts
from edgecloud.gateway.state import (
    NO_LIMIT,
    Begin,
    End,
    Ends,
    MemoryStore,
    StateStore,
    StateUnavailable,
    Usage,
    month_now,
    scaled,
)
from edgecloud.logs import log_event

if TYPE_CHECKING:
    from edgecloud.gateway.health import EndpointState
    from edgecloud.gateway.metrics import GatewayMetrics

_events = logging.getLogger("edgecloud.gateway")
GLOBAL = "global"
SYNC_UP_S = 0.25  # heartbeat and spend refresh while the store answers
SYNC_DOWN_S = 0.1  # ping while it does not
HEARTBEAT_TTL_S = 2.0
BATCH_NAMES = 500  # slots and reservations named per batch of ends (one call on the store)
# Batches per round trip: about 0.4 ms of Redis each (500 names, 170 requests), so a begin
# queued behind a drain after an outage waits some 6 ms, far below state.timeout_s.
BATCHES_PER_SEND = 16


def open_store(config: GatewayConfig) -> StateStore:
    """The configured store; raises ConfigError when redis is chosen and its URL is not set."""
    st = config.state
    if st.backend == "memory":
        return MemoryStore()
    url = os.environ.get(st.url_env, "").strip()
    if not url:
        raise ConfigError(f"state.backend is redis, but ${st.url_env} is not set (give it "
                          "redis://[:password@]host:port/db or rediss://...)")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"${st.url_env} must be a redis:// or rediss:// URL")
    from edgecloud.gateway.redis_state import RedisStore

    return RedisStore(url, st.prefix, st.timeout_s)


def duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    m, s = divmod(math.ceil(seconds), 60)
    return f"{m}m{s}s"


def ratelimit_headers(limits: tuple[int, int], usage: Usage) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* triples for the limits a key has (rpm, tpm; NO_LIMIT: none)."""
    return _RateHeaders(*limits)(usage)


@functools.lru_cache(maxsize=4096)
def _reset_value(reset_ms: int) -> bytes:
    # A handful of values in practice (an admitted request's reset is the window, give or take
    # a bucket), so formatted once each.
    return duration(reset_ms / 1000).encode()


class _RateHeaders:
    """The x-ratelimit-* headers for one pair of limits: names and limits encoded once."""

    __slots__ = ("limits", "requests", "tokens")

    def __init__(self, rpm: int, tpm: int) -> None:
        self.limits = (rpm, tpm)
        self.requests = None if rpm == NO_LIMIT else (rpm, str(rpm).encode())
        self.tokens = None if tpm == NO_LIMIT else (tpm, str(tpm).encode())

    def __call__(self, usage: Usage) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if self.requests is not None:
            limit, value = self.requests
            out += [(b"x-ratelimit-limit-requests", value),
                    (b"x-ratelimit-remaining-requests",
                     str(max(limit - usage.requests, 0)).encode()),
                    (b"x-ratelimit-reset-requests", _reset_value(usage.requests_reset_ms))]
        if self.tokens is not None:
            limit, value = self.tokens
            out += [(b"x-ratelimit-limit-tokens", value),
                    (b"x-ratelimit-remaining-tokens", str(max(limit - usage.tokens, 0)).encode()),
                    (b"x-ratelimit-reset-tokens", _reset_value(usage.tokens_reset_ms))]
        return out


class Limiter:
    """Admission, budget and the shared store's health for one gateway process."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics,
                 store: StateStore | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store if store is not None else open_store(config)
        self.store.abandoned = self._abandoned
        self.shared = config.state.backend == "redis"
        # The rate-limit fallback while the shared store is down (the store itself in memory).
        self.local = self.store if isinstance(self.store, MemoryStore) else MemoryStore()
        self.lease_s = config.state.lease_s
        self.budget = config.policy.budget
        self.up = True
        self.replicas = 1
        self.replica_id = uuid.uuid4().hex[:12]
        self._leases = itertools.count()
        self._spent = 0.0  # global spend + reservations, as last read or counted here
        # Request ends, merged and sent in batches (one round trip for many) off the request's
        # path; while the store is down they wait here and go once it is back.
        self._ends = EndQueue()
        self._ends_ready = asyncio.Event()
        self._states: list[EndpointState] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._terms: dict[int, _KeyTerms] = {}  # id(key) -> its terms

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, states: list[EndpointState]) -> None:
        self._states = states
        await self._sync()
        self._tasks = [asyncio.create_task(self._sync_loop()),
                       asyncio.create_task(self._end_loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.up:
            await self._send_ends()
        if self._ends:
            log_event(_events, "state.ends_lost", logging.ERROR, count=len(self._ends),
                      usd=round(self._ends.usd(), 6))
        await self.store.close()

    def _down(self, exc: StateUnavailable) -> None:
        if self.up:
            self.up = False
            self.metrics.state_up(False)
            log_event(_events, "state.down", logging.WARNING, error=str(exc),
                      replicas=self.replicas)

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_UP_S if self.up else SYNC_DOWN_S)
            await self._sync()

    async def _sync(self) -> None:
        """Heartbeat (in-flight counts, live replicas) and the budget's spend; while down, a
        ping that brings the store back (and sends the ends held meanwhile)."""
        try:
            if not self.up:
                await self.store.ping()
                self.up = True
                self.metrics.state_up(True)
                log_event(_events, "state.up", pending=len(self._ends))
                self._ends_ready.set()
            if self.shared:
                others, self.replicas = await self.store.heartbeat(
                    self.replica_id, {s.name: s.in_flight for s in self._states},
                    HEARTBEAT_TTL_S)
                for s in self._states:
                    s.others_in_flight = others.get(s.name, 0)
            if self.budget.monthly_cloud_usd is not None:
                self._spent = (await self.store.spent([GLOBAL], month_now()))[GLOBAL]
        except StateUnavailable as exc:
            self._down(exc)
            for s in self._states:
                s.others_in_flight = 0  # unknown: count this replica's alone

    async def _end_loop(self) -> None:
        while True:
            await self._ends_ready.wait()
            self._ends_ready.clear()
            if self.up:
                await self._send_ends()

    async def _send_ends(self) -> None:
        while self._ends and self.up:
            batches = self._ends.take()
            try:
                await self.store.end_many(batches)
            except StateUnavailable as exc:
                self._down(exc)  # kept, and sent again once the store is back
                return
            self._ends.done(len(batches))

    def end(self, e: End) -> None:
        """Queue a request's end for the next batch (never blocks the request, never drops)."""
        self._ends.add(e)
        self._ends_ready.set()

    def _abandoned(self, b: Begin, slot: bool, reservation: bool) -> None:
        """What a begin took that its request will not give back (the request was cancelled
        while the store decided, or the begin's outcome is unknown): its slot and reservation
        go back with the next batch of ends (its counted request and tokens stay, as for any
        request)."""
        if slot or reservation:
            self.end(End(b.key if slot else None, b.lease, 0,
                         tuple(b.scopes) if reservation else (), 0.0, b.month, slot,
                         reservation))

    # -- the request path ---------------------------------------------------------------------
    def applies(self, key: ApiKeyConfig | None) -> bool:
        """Whether a request needs a Gate (a key to count, or a budget to keep)."""
        return key is not None or self.budget.monthly_cloud_usd is not None

    def cloud_spend(self) -> float:
        """This month's global cloud spend (and reservations) as last known, for the policy."""
        return self._spent

    def next_lease(self) -> str:
        """A request's id in the shared store: unique across replicas (the replica's id and a
        count), and cheaper than a uuid4 per request."""
        return f"{self.replica_id}{next(self._leases):x}"

    def gate(self, key: ApiKeyConfig | None, facts: RequestFacts) -> Gate:
        """The request's Gate; nothing is counted until its first `place`."""
        return Gate(self, key, facts)

    def _terms_of(self, key: ApiKeyConfig | None) -> _KeyTerms:
        """What every request of `key` asks of the limiter, worked out once per key (the
        config is frozen)."""
        terms = self._terms.get(id(key))
        if terms is None or terms.key is not key:
            if len(self._terms) >= 4096:  # keys come from the config: only a leak gets here
                self._terms.clear()
            terms = self._terms[id(key)] = _KeyTerms(self, key)
        return terms

    def limits_now(self, limits: KeyLimits | None) -> tuple[StateStore, int, int, int]:
        """The store that counts a key's rate limits now, and the limits there: the shared
        ones, or this replica's share while the shared store is down."""
        if limits is None:
            store: StateStore = self.store if self.up else self.local
            return store, NO_LIMIT, NO_LIMIT, NO_LIMIT
        if self.up:
            return (self.store, _or_none(limits.rpm), _or_none(limits.tpm),
                    _or_none(limits.max_parallel))
        n = self.replicas
        local: StateStore = self.local
        return (local, scaled(limits.rpm, n), scaled(limits.tpm, n),
                scaled(limits.max_parallel, n))

    def scopes(self, key: ApiKeyConfig | None) -> dict[str, float]:
        """The budgets a request counts against: scope -> cap (NO_LIMIT: counted, not capped)."""
        out: dict[str, float] = {}
        b = self.budget
        if b.monthly_cloud_usd is not None:
            out[GLOBAL] = b.monthly_cloud_usd if b.hard else NO_LIMIT
        if key is not None and key.limits is not None and key.limits.monthly_cloud_usd is not None:
            out["key:" + key.name] = key.limits.monthly_cloud_usd
        return out


_UNLIMITED = (NO_LIMIT, NO_LIMIT, NO_LIMIT)


class EndQueue:
    """Request ends waiting for the store, merged: an open batch that each end joins, sealed
    once it names `names` slots and reservations (a call on the store of bounded size) or
    when taken to be sent. A sent batch stays until `done`, and is never merged into again:
    the store may have applied it (its answer lost), and sends it again as it was."""

    __slots__ = ("names", "_open", "_sealed")

    def __init__(self, names: int = BATCH_NAMES) -> None:
        self.names = names
        self._open = Ends()
        self._sealed: deque[Ends] = deque()

    def __len__(self) -> int:
        """The requests whose ends wait."""
        return self._open.count + sum(b.count for b in self._sealed)

    def add(self, e: End) -> None:
        batch = self._open
        batch.add(e)
        if batch.names >= self.names:
            self._sealed.append(batch)
            self._open = Ends()

    def take(self, most: int = BATCHES_PER_SEND) -> list[Ends]:
        """The oldest sealed batches (at most `most`), to send and then mark `done`; none
        sealed: the open one, sealed. (The open one waits while others do, so that a store
        that keeps failing their sends does not leave one more batch sealed after each try.)"""
        if not self._sealed and self._open.count:
            self._sealed.append(self._open)
            self._open = Ends()
        return list(itertools.islice(self._sealed, most))

    def done(self, n: int) -> None:
        """The oldest `n` batches were applied."""
        for _ in range(n):
            self._sealed.popleft()

    def usd(self) -> float:
        """The cost the waiting ends settle, summed over their budgets' scopes."""
        return self._open.usd() + sum(b.usd() for b in self._sealed)

    def held(self) -> tuple[int, int]:
        """What the queue holds: batches, and slots and reservations named."""
        return (len(self._sealed) + (1 if self._open.count else 0),
                self._open.names + sum(b.names for b in self._sealed))


def _or_none(v: int | None) -> int:
    return NO_LIMIT if v is None else v


class _KeyTerms:
    """One key's limits and budgets as the request path uses them (key None: the budget
    alone): its rate limits, the scopes it counts against, the x-ratelimit-* headers."""

    __slots__ = ("key", "name", "rate", "counts_tokens", "holds_slot", "limits", "shared",
                 "scopes", "scope_names", "capped", "headers")

    def __init__(self, limiter: Limiter, key: ApiKeyConfig | None) -> None:
        limits = key.limits if key is not None else None
        self.key = key
        self.name = key.name if key is not None else None
        self.limits = limits
        self.rate = limits is not None and limits.rate_limited
        # The answer's tokens count against tpm (only a key that has one keeps a token log).
        self.counts_tokens = limits is not None and limits.tpm is not None
        # Its requests hold a parallel slot (a lease) to free at the end.
        self.holds_slot = limits is not None and limits.max_parallel is not None
        # The limits on the shared store (limits_now's, while it answers).
        self.shared = _UNLIMITED
        if limits is not None and self.rate:
            self.shared = (_or_none(limits.rpm), _or_none(limits.tpm),
                           _or_none(limits.max_parallel))
        self.scopes = limiter.scopes(key)  # never changed: every Begin of the key shares it
        self.scope_names = tuple(self.scopes)
        self.capped = any(cap != NO_LIMIT for cap in self.scopes.values())
        self.headers = _RateHeaders(*self.shared[:2])


def _rate_limited(name: str, usage: Usage, limits: tuple[int, int, int], tokens: int
                  ) -> RateLimited:
    """The 429; its x-ratelimit-* headers are added by Gate.wrap, as on every answer."""
    rpm, tpm, par = limits
    wait = max(usage.wait_ms, 1) / 1000
    if usage.limited == "requests":
        what = f"{rpm} requests per minute"
    elif usage.limited == "tokens":
        what = f"{tpm} tokens per minute (this request: about {tokens})"
    else:
        what = f"{par} requests in flight at once"
    err = RateLimited(f"Rate limit reached for key {name!r}: {what}. Retry after "
                      f"{duration(wait)}.", code="rate_limit_exceeded")
    err.type = "tokens" if usage.limited == "tokens" else "requests"
    err.headers = {"retry-after": str(max(math.ceil(wait), 1)),
                   "retry-after-ms": str(max(math.ceil(wait * 1000), 1))}
    return err


class Gate:
    """One request's hold on its key's limits and the budget: taken at its first placement
    (one atomic step on the store), given back when it ends."""

    __slots__ = ("limiter", "key", "facts", "lease", "headers", "_terms", "_send",
                 "_counted_in", "_reserved", "_month")

    def __init__(self, limiter: Limiter, key: ApiKeyConfig | None, facts: RequestFacts) -> None:
        self.limiter = limiter
        self.key = key
        self.facts = facts
        self.lease = limiter.next_lease()
        self.headers: list[tuple[bytes, bytes]] = []
        self._terms = limiter._terms_of(key)
        self._send: Send | None = None
        # The store that holds this request's parallel slot and tokens; None: not counted yet.
        self._counted_in: StateStore | None = None
        self._reserved = False
        self._month = month_now()

    def wrap(self, send: Send) -> Send:
        """`send` with the key's x-ratelimit-* headers added to the answer's start."""
        if not self._terms.rate:
            return send
        self._send = send
        return self._send_with_headers

    async def _send_with_headers(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self.headers:
            message = {**message, "headers": [*message.get("headers", ()), *self.headers]}
        await self._send(message)  # type: ignore[misc]  # set by wrap

    async def place(self, decision: PlacementDecision) -> PlacementDecision:
        """Count the request against its key's rate limits (once: raises RateLimited) and
        reserve the decision's estimated cloud cost in every capped budget (once: a fallback or
        retry reuses it). Where the reservation fails, the decision without the cloud, or
        InsufficientQuota / BudgetUnavailable where only the cloud could take it."""
        lim = self.limiter
        terms = self._terms
        rate = terms.rate and self._counted_in is None
        amount = 0.0
        if terms.capped and not self._reserved:
            # The dearest cloud endpoint of the decision (none: nothing to reserve).
            clouds = False
            f = self.facts
            prompt = f.prompt_tokens_estimate
            out = f.max_output_tokens or lim.config.policy.default_output_tokens
            for e in decision.order:
                config = e.config
                if config.tier == "cloud":
                    price = config.price
                    cost = (price.input_per_mtok * prompt + price.output_per_mtok * out) / 1e6
                    if not clouds or cost > amount:
                        amount = cost
                    clouds = True
            if clouds and not lim.up and not rate:
                return self._without_cloud(decision, None)
        if not rate and amount <= 0:
            return decision
        if lim.up:
            store: StateStore = lim.store
            rpm, tpm, par = terms.shared if rate else _UNLIMITED
        else:
            store, rpm, tpm, par = lim.limits_now(terms.limits if rate else None)
        tokens = self.facts.prompt_tokens_estimate
        shared_budget = amount > 0 and lim.up
        name = terms.name if rate else None
        if store is lim.store:
            begin = Begin(name, rpm, tpm, par, tokens, self.lease, lim.lease_s, terms.scopes,
                          amount, self._month)
        else:
            begin = Begin(name, rpm, tpm, par, tokens, self.lease, lim.lease_s, {}, 0.0,
                          self._month)
        try:
            usage, reserved = await store.begin(begin)
        except StateUnavailable as exc:
            lim._down(exc)
            shared_budget = False
            store, rpm, tpm, par = lim.limits_now(terms.limits if rate else None)
            begin = Begin(name, rpm, tpm, par, tokens, self.lease, lim.lease_s, {}, 0.0,
                          self._month)
            usage, reserved = await store.begin(begin)
        if usage is not None and terms.name is not None:
            headers = terms.headers
            self.headers = (headers(usage) if headers.limits == (rpm, tpm)
                            else ratelimit_headers((rpm, tpm), usage))
            if usage.limited is not None:
                lim.metrics.key_limited(terms.name, usage.limited)
                raise _rate_limited(terms.name, usage, (rpm, tpm, par), tokens)
            self._counted_in = store
        if amount <= 0:
            return decision
        if not shared_budget or reserved is None:
            return self._without_cloud(decision, None)
        if GLOBAL in reserved.spent:
            lim._spent = reserved.spent[GLOBAL]
        if reserved.refused is not None:
            return self._without_cloud(decision, reserved.refused)
        self._reserved = True
        return decision

    def _without_cloud(self, decision: PlacementDecision, refused: str | None
                       ) -> PlacementDecision:
        if refused is None:
            rule = "budget.unavailable"
            why = "the budget's shared store is down: the cloud is paused"
        elif refused == GLOBAL:
            rule, why = "budget.hard", "the monthly cloud budget is spent (hard cap)"
        else:
            name = refused[4:]
            rule, why = "budget.key", f"key {name!r} has spent its monthly cloud budget"
            self.limiter.metrics.key_limited(name, "budget")
        edges = tuple(e for e in decision.order if e.config.tier == "edge")
        if not edges:
            if refused is None:
                raise BudgetUnavailable(rule, why + "; no edge endpoint may take this request")
            raise InsufficientQuota(rule, why + "; no edge endpoint may take this request")
        primary_moved = decision.order[0].config.tier == "cloud"
        return PlacementDecision(edges, rule if primary_moved else decision.rule,
                                 why if primary_moved else decision.explanation,
                                 decision.restricted, panic=decision.panic)

    def finish(self, record: dict[str, Any]) -> None:
        """Give back the parallel slot, count the answer's tokens, settle the budget to the
        actual cost: queued for the next batch, never blocking nor raising."""
        lim = self.limiter
        terms = self._terms
        placement = record.get("placement", "none")
        actual = float(record.get("cost_usd", 0.0)) if placement == "cloud" else 0.0
        completion = int(record.get("output_tokens", 0))
        name = terms.name
        if name is not None:
            lim.metrics.key_request(name, placement, self.facts.prompt_tokens_estimate,
                                    completion, actual)
        counted = self._counted_in
        tpm_tokens = completion if terms.counts_tokens else 0
        if counted is not None and counted is not lim.store and name is not None:
            lim.local.release_now(name, self.lease, tpm_tokens)  # counted while down
            counted = None
        scopes = terms.scope_names if (self._reserved or actual > 0) else ()
        if GLOBAL in scopes and not self._reserved:
            lim._spent += actual
        if counted is None and not scopes:
            return
        lim.end(End(name if counted is not None else None, self.lease, tpm_tokens, scopes,
                    actual, self._month, terms.holds_slot, self._reserved))
