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
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import uuid
from collections import deque
from dataclasses import dataclass
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
    MemoryStore,
    StateStore,
    StateUnavailable,
    Usage,
    month_now,
    scaled,
    window_reset_s,
    window_used,
    window_wait_s,
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
MAX_PENDING = 10_000  # settlements held while the store is down


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
    out: list[tuple[bytes, bytes]] = []
    rpm, tpm = limits
    for kind, limit, prev, curr in (("requests", rpm, usage.req_prev, usage.req_curr),
                                    ("tokens", tpm, usage.tok_prev, usage.tok_curr)):
        if limit == NO_LIMIT:
            continue
        used = window_used(prev, curr, usage.elapsed_ms)
        out += [
            (b"x-ratelimit-limit-" + kind.encode(), str(limit).encode()),
            (b"x-ratelimit-remaining-" + kind.encode(),
             str(max(math.floor(limit - used), 0)).encode()),
            (b"x-ratelimit-reset-" + kind.encode(),
             duration(window_reset_s(prev, curr, usage.elapsed_ms)).encode()),
        ]
    return out


@dataclass(slots=True)
class _Pending:
    scopes: list[str]
    rid: str
    actual: float
    month: str


class Limiter:
    """Admission, budget and the shared store's health for one gateway process."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics,
                 store: StateStore | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store if store is not None else open_store(config)
        self.shared = config.state.backend == "redis"
        self.local = MemoryStore() if self.shared else self.store  # rate-limit fallback
        self.lease_s = config.state.lease_s
        self.budget = config.policy.budget
        self.up = True
        self.replicas = 1
        self.replica_id = uuid.uuid4().hex[:12]
        self._spent = 0.0  # global spend + reservations, as last read or counted here
        self._pending: deque[_Pending] = deque()
        self._states: list[EndpointState] = []
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, states: list[EndpointState]) -> None:
        self._states = states
        await self._sync()
        self._task = asyncio.create_task(self._sync_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._flush()
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
        """Heartbeat (in-flight counts, live replicas), the budget's spend, pending settlements;
        while down, a ping that brings the store back."""
        try:
            if not self.up:
                await self.store.ping()
                self.up = True
                self.metrics.state_up(True)
                log_event(_events, "state.up", pending=len(self._pending))
            await self._flush()
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

    async def _flush(self) -> None:
        while self._pending and self.up:
            p = self._pending[0]
            await self.store.settle(p.scopes, p.rid, p.actual, p.month)
            self._pending.popleft()

    # -- the request path ---------------------------------------------------------------------
    def applies(self, key: ApiKeyConfig | None) -> bool:
        """Whether a request needs a Gate (a key to count, or a budget to keep)."""
        return key is not None or self.budget.monthly_cloud_usd is not None

    def cloud_spend(self) -> float:
        """This month's global cloud spend (and reservations) as last known, for the policy."""
        return self._spent

    async def admit(self, key: ApiKeyConfig | None, facts: RequestFacts) -> Gate:
        """Count the request against its key's rate limits; raises RateLimited (429)."""
        gate = Gate(self, key, facts)
        limits = key.limits if key is not None else None
        if key is None or limits is None or not limits.rate_limited:
            return gate
        store, rpm, tpm, par = self._limits_now(limits)
        tokens = facts.prompt_tokens_estimate
        try:
            usage = await store.admit(key.name, rpm, tpm, par, tokens, gate.lease, self.lease_s)
        except StateUnavailable as exc:
            self._down(exc)
            store, rpm, tpm, par = self._limits_now(limits)
            usage = await store.admit(key.name, rpm, tpm, par, tokens, gate.lease, self.lease_s)
        headers = ratelimit_headers((rpm, tpm), usage)
        if usage.limited is not None:
            self.metrics.key_limited(key.name, usage.limited)
            raise _rate_limited(key.name, usage, (rpm, tpm, par), tokens, headers)
        gate.admitted(store, headers)
        return gate

    def _limits_now(self, limits: KeyLimits) -> tuple[StateStore, int, int, int]:
        if self.up:
            return (self.store, _or_none(limits.rpm), _or_none(limits.tpm),
                    _or_none(limits.max_parallel))
        n = self.replicas
        return (self.local, scaled(limits.rpm, n), scaled(limits.tpm, n),
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

    def settle_later(self, scopes: list[str], rid: str, actual: float, month: str) -> None:
        if len(self._pending) < MAX_PENDING:
            self._pending.append(_Pending(scopes, rid, actual, month))
        else:
            log_event(_events, "state.settlement_dropped", logging.ERROR, usd=actual)


def _or_none(v: int | None) -> int:
    return NO_LIMIT if v is None else v


def _rate_limited(name: str, usage: Usage, limits: tuple[int, int, int], tokens: int,
                  headers: list[tuple[bytes, bytes]]) -> RateLimited:
    rpm, tpm, par = limits
    el = usage.elapsed_ms
    if usage.limited == "requests":
        wait = window_wait_s(usage.req_prev, usage.req_curr, el, 1, rpm)
        what = f"{rpm} requests per minute"
    elif usage.limited == "tokens":
        wait = window_wait_s(usage.tok_prev, usage.tok_curr, el, tokens, tpm)
        what = f"{tpm} tokens per minute (this request: about {tokens})"
    else:
        wait = 1.0
        what = f"{par} requests in flight at once"
    err = RateLimited(f"Rate limit reached for key {name!r}: {what}. Retry after "
                      f"{duration(wait)}.", code="rate_limit_exceeded")
    err.type = "tokens" if usage.limited == "tokens" else "requests"
    err.headers = {"retry-after": str(max(math.ceil(wait), 1)),
                   "retry-after-ms": str(max(math.ceil(wait * 1000), 1)),
                   **{k.decode(): v.decode() for k, v in headers}}
    return err


class Gate:
    """One admitted request's hold on its key's limits and the budget."""

    __slots__ = ("limiter", "key", "facts", "lease", "headers", "_store", "_scopes", "_rid",
                 "_month")

    def __init__(self, limiter: Limiter, key: ApiKeyConfig | None, facts: RequestFacts) -> None:
        self.limiter = limiter
        self.key = key
        self.facts = facts
        self.lease = uuid.uuid4().hex
        self.headers: list[tuple[bytes, bytes]] = []
        self._store: StateStore | None = None  # where the parallel slot and tokens were taken
        self._scopes: dict[str, float] | None = None
        self._rid: str | None = None
        self._month = ""

    def admitted(self, store: StateStore, headers: list[tuple[bytes, bytes]]) -> None:
        self._store = store
        self.headers = headers

    def wrap(self, send: Send) -> Send:
        """`send` with the key's x-ratelimit-* headers added to the answer's start."""
        if not self.headers:
            return send
        extra = self.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return send_with_headers

    async def place(self, decision: PlacementDecision) -> PlacementDecision:
        """Reserve the decision's estimated cloud cost in every capped budget, once per request
        (a fallback or retry reuses it); where that fails, the decision without the cloud, or
        InsufficientQuota / BudgetUnavailable where only the cloud could take it."""
        clouds = [e for e in decision.order if e.config.tier == "cloud"]
        lim = self.limiter
        if self._scopes is None:
            self._scopes = lim.scopes(self.key)
            self._month = month_now()
        capped = any(cap != NO_LIMIT for cap in self._scopes.values())
        if not clouds or not capped or self._rid is not None:
            return decision
        f = self.facts
        out = f.max_output_tokens or lim.config.policy.default_output_tokens
        amount = max((e.config.price.input_per_mtok * f.prompt_tokens_estimate
                      + e.config.price.output_per_mtok * out) / 1e6 for e in clouds)
        if lim.up:
            rid = self.lease
            try:
                got = await lim.store.reserve(self._scopes, amount, rid, self._month, lim.lease_s)
            except StateUnavailable as exc:
                lim._down(exc)
            else:
                if GLOBAL in got.spent:
                    lim._spent = got.spent[GLOBAL]
                if got.refused is None:
                    self._rid = rid
                    return decision
                return self._without_cloud(decision, got.refused)
        return self._without_cloud(decision, None)

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

    async def finish(self, record: dict[str, Any]) -> None:
        """Settle the budget to the actual cost, free the parallel slot, count the answer's
        tokens. Never raises: a store that is down gets the settlement later."""
        lim = self.limiter
        actual = float(record.get("cost_usd", 0.0)) if record.get("placement") == "cloud" else 0.0
        completion = int(record.get("completion_tokens", 0))
        if self.key is not None:
            lim.metrics.key_request(self.key.name, record.get("placement", "none"),
                                    self.facts.prompt_tokens_estimate, completion, actual)
        if self._scopes is None:
            self._scopes = lim.scopes(self.key)
            self._month = month_now()
        if self._scopes and (self._rid is not None or actual > 0):
            names = list(self._scopes)
            rid = self._rid or self.lease
            if GLOBAL in self._scopes and self._rid is None:
                lim._spent += actual
            try:
                if not lim.up:
                    raise StateUnavailable("down")
                await lim.store.settle(names, rid, actual, self._month)
            except StateUnavailable as exc:
                if lim.up:
                    lim._down(exc)
                lim.settle_later(names, rid, actual, self._month)
        if self._store is not None and self.key is not None:
            try:
                await self._store.release(self.key.name, self.lease, completion)
            except StateUnavailable as exc:
                lim._down(exc)  # the slot's lease expires on its own
