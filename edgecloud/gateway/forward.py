"""Forwarding one placed request: try the decision's endpoints in order, stream the answer back.

Fallback happens only before the first byte reaches the client, and only along the decision's
order, which policy built from allowed endpoints alone. A non-streamed answer is read whole
before anything is sent, so a failure while reading it falls back too. Each attempt releases its
in-flight count and any breaker trial it took in `finally`, on every path; a client that leaves
ends the upstream exchange at once (api/clientwatch.py), in every phase.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from edgecloud.api.asgi import Send, StreamedReply
from edgecloud.api.clientwatch import ClientWatch
from edgecloud.api.replies import sse_error
from edgecloud.gateway.deadline import Deadlines
from edgecloud.gateway.errors import NoAllowedEndpoint, RuleError, UpstreamCut, UpstreamFailed
from edgecloud.gateway.health import EndpointState
from edgecloud.gateway.metrics import GatewayMetrics
from edgecloud.gateway.policy import PlacementDecision
from edgecloud.gateway.pseudonymize import Rewritten, Surrogates, restore_answer
from edgecloud.gateway.request import RequestFacts, with_model_parts
from edgecloud.gateway.restore_stream import RestoredStream
from edgecloud.gateway.upstream import TRANSPORT_ERRORS, Upstream
from edgecloud.http1 import StreamedResponse

if TYPE_CHECKING:
    from edgecloud.gateway.otel import RequestTrace

_PASS_HEADERS = frozenset({b"content-type", b"content-encoding", b"retry-after", b"x-request-id",
                           b"openai-processing-ms"})
_COMPLETION_TOKENS = b'"completion_tokens":'
_PROMPT_TOKENS = b'"prompt_tokens":'
# Usage counts in a stream's last events: chat's, then the Responses and Messages names.
_INPUT_KEYS = (_PROMPT_TOKENS, b'"input_tokens":')
_OUTPUT_KEYS = (_COMPLETION_TOKENS, b'"output_tokens":')


def _usage_count(data: bytes, keys: tuple[bytes, ...]) -> int | None:
    for key in keys:
        if key in data:
            return _completion_tokens(data, key)
    return None


def _completion_tokens(body: bytes, key: bytes = _COMPLETION_TOKENS) -> int:
    """usage.completion_tokens (or another usage count) found by a byte search (no second
    parse of the answer)."""
    i = body.rfind(key)
    if i < 0:
        return 0
    j = i + len(key)
    while j < len(body) and body[j] in b" \t":
        j += 1
    k = j
    while k < len(body) and 48 <= body[k] <= 57:
        k += 1
    return int(body[j:k]) if k > j else 0


def _count(value: Any) -> int:
    """A usage count as _completion_tokens reads it: a non-negative integer, else 0."""
    return value if type(value) is int and value >= 0 else 0


@dataclass(slots=True)
class Exchange:
    """One client request on its way upstream: what every endpoint tried is sent, and where
    the answer and the request's record go."""

    send: Send
    watch: ClientWatch
    path: str
    raw: bytes
    facts: RequestFacts
    record: dict[str, Any]
    t0: float
    trace: RequestTrace | None = None


class _Attempt:
    """One endpoint tried: its place in the order, the answer as it arrives, and what its trace
    span will say."""

    __slots__ = ("state", "index", "last", "surrogates", "resp", "data", "usage", "t_up",
                 "status", "error")

    def __init__(self, state: EndpointState, index: int, last: bool,
                 surrogates: Surrogates | None) -> None:
        self.state = state
        self.index = index
        self.last = last
        self.surrogates = surrogates  # a pseudonymised request's, to restore in the answer
        self.resp: StreamedResponse | None = None
        self.data: bytes | None = None  # a non-streamed answer, read whole
        self.usage: Any = None  # its parsed "usage" (a 2xx answer is parsed once, by _judge)
        self.t_up = 0.0
        self.status: int | None = None
        self.error: str | None = None


class Forwarder:
    """Sends placed requests upstream and relays the answers; records what happened."""

    def __init__(self, upstreams: dict[str, Upstream], metrics: GatewayMetrics) -> None:
        self.upstreams = upstreams
        self.metrics = metrics
        self.deadlines = Deadlines()  # the upstream waits' deadlines, on one timer

    async def forward(self, ex: Exchange, decision: PlacementDecision,
                      rewritten: Rewritten | None = None, failures: list[str] | None = None
                      ) -> RuleError | None:
        """Try the decision's endpoints in order and relay the first usable answer.

        Returns the refusal, sent to no one yet, when every endpoint failed before anything
        reached the client: the caller sends it or tries elsewhere. `failures` collects what
        failed across such passes: an earlier pass's count as fallbacks and are named in a
        later pass's refusal. Raises BadRequest (nothing sent) for a body that cannot be
        re-encoded for an endpoint that needs another model id. With `rewritten` (a
        pseudonymised request), cloud endpoints get the surrogates and their answers are
        restored; edge ones the original."""
        if failures is None:
            failures = []
        earlier = len(failures)
        order = decision.order
        for index, state in enumerate(order):
            if ex.watch.gone:
                self._client_gone(state, decision.rule, ex.record, ex.t0)
                return None
            failed = await self._try(ex, decision.rule, rewritten, earlier,
                                     state, index, index + 1 == len(order))
            if failed is None:
                return None
            failures.append(failed)
        # Nothing answered. Fail closed with the rule that restricted the request, if any.
        detail = "; ".join(failures) or "no endpoint was tried"
        if decision.restricted:
            return NoAllowedEndpoint(decision.rule, f"every allowed endpoint failed ({detail}); "
                                     "the request was not sent anywhere else")
        return UpstreamFailed("fallback", f"every endpoint failed ({detail})")

    async def _try(self, ex: Exchange, rule: str, rewritten: Rewritten | None, earlier: int,
                   state: EndpointState, index: int, last: bool) -> str | None:
        """One endpoint: what failed, to note before the next is tried (nothing reached the
        client), or None once the exchange is over (relayed, or the client left)."""
        # Built before anything is taken, so that a refusal here leaves no state behind.
        # A pseudonymised request: cloud endpoints get the surrogates, edge ones the original.
        sent_as = rewritten if state.config.tier == "cloud" else None
        at = _Attempt(state, index, last, sent_as.surrogates if sent_as is not None else None)
        body = _body(ex.raw, ex.facts, state, sent_as)
        ticket = state.breaker.acquire(time.monotonic())
        if not ticket:
            return f"{state.name}: circuit open"
        up = self.upstreams[state.name]
        span = None
        if ex.trace is not None:
            span = ex.trace.attempt(state.name, state.config.tier, up.base + ex.path, index + 1,
                                    sum(len(p) for p in body))
        state.in_flight += 1
        at.t_up = time.perf_counter()
        try:
            try:
                await self._fetch(ex, at, up, body, sent_as,
                                  span.headers if span is not None else None)
            except TRANSPORT_ERRORS as exc:
                if ex.watch.gone:
                    at.error = "client_gone"
                    self._client_gone(state, rule, ex.record, ex.t0)
                    return None
                at.status, at.error = None, type(exc).__name__
                self._failed(state, "connect" if at.resp is None else "read", exc)
                return (f"{state.name}: {type(exc).__name__}"
                        + (" while reading the answer" if at.resp is not None else ""))
            return await self._answer(ex, at, rule, earlier)
        finally:
            state.in_flight -= 1
            state.breaker.release(ticket)
            if span is not None:
                span.end(at.status, at.error)

    async def _fetch(self, ex: Exchange, at: _Attempt, up: Upstream,
                     body: Sequence[bytes | memoryview],
                     sent_as: Rewritten | None, trace_headers: Any) -> None:
        """The answer's head into `at`, and its whole body unless it streams or failed (5xx),
        within one read deadline. Raises what the transport raised, the exchange closed."""
        state = at.state
        loop = asyncio.get_running_loop()
        try:
            with self.deadlines.at(loop.time() + state.config.timeout_s) as guard:
                ex.watch.guard = guard
                if ex.watch.gone:
                    raise TimeoutError  # left between the caller's check and now
                if state.model_id is None and not state.healthy:
                    # Never probed up (panic mode): learn its model id first, as a passing
                    # probe would have.
                    if await up.discover_model(state.config.connect_timeout_s) is not None:
                        body = _body(ex.raw, ex.facts, state, sent_as)
                resp = at.resp = await up.request(ex.path, body, trace_headers)
                at.status = resp.status
                if not _is_stream(resp) and resp.status < 500:
                    at.data = await resp.read()
        except BaseException:  # a transport error, or cancelled (shutdown): mid-way
            if at.resp is not None:
                at.resp.close()
            raise
        finally:
            ex.watch.guard = None

    async def _answer(self, ex: Exchange, at: _Attempt, rule: str, earlier: int) -> str | None:
        """The endpoint answered: fall back on a 5xx (a 429 or an invalid JSON answer too,
        unless it is the last endpoint), else relay the answer."""
        state, resp, data = at.state, at.resp, at.data
        assert resp is not None
        status = resp.status
        if status >= 500 or (status == 429 and not at.last):
            resp.release()
            if status >= 500:
                state.breaker.failure(time.monotonic())
                self.metrics.upstream_failure(state.name, f"status_{status}")
            else:
                state.breaker.success()  # 429: alive, just full
                state.healthy = True
            self.metrics.fallback(state.name, f"status_{status}")
            return f"{state.name}: HTTP {status}"
        if data is not None and not self._judge(at, status, data) and not at.last:
            # A 2xx that is not JSON, nothing sent yet: the next endpoint may do better (the
            # last one's is relayed as it came, and counted as a failure).
            resp.release()
            self.metrics.fallback(state.name, "invalid_json")
            return f"{state.name}: HTTP {status} with an invalid JSON answer"
        # It answered: up, whatever the last probe said (ends a panic-mode wait at once).
        state.healthy = True
        if at.index > 0:
            rule = "fallback"
        ex.record["fallbacks"] = at.index + earlier
        if data is not None:
            if at.surrogates is not None and status < 400:
                data = restore_answer(data, at.surrogates)
            await self._relay_body(ex.send, resp, data, at.usage, state, rule, ex.facts,
                                   ex.record, ex.t0, at.t_up)
        else:
            state.breaker.success()  # a stream started: the trial is over
            await self._relay_stream(ex.send, ex.watch, resp, state, rule, ex.facts, ex.record,
                                     ex.t0, at.t_up, at.surrogates)
        at.status, at.error = ex.record.get("status"), ex.record.get("error")
        return None

    def _failed(self, state: EndpointState, cause: str, exc: BaseException) -> None:
        state.breaker.failure(time.monotonic())
        state.last_error = type(exc).__name__
        self.metrics.upstream_failure(state.name, cause)
        self.metrics.fallback(state.name, cause)

    def _judge(self, at: _Attempt, status: int, data: bytes) -> bool:
        """The breaker's verdict on a whole non-streamed answer: a 2xx must be JSON (its
        "usage" is kept in `at`, so the answer is parsed once)."""
        state = at.state
        if status < 300:
            try:
                answer = orjson.loads(data)
            except orjson.JSONDecodeError:
                state.breaker.failure(time.monotonic())
                state.last_error = "invalid JSON answer"
                self.metrics.upstream_failure(state.name, "invalid_json")
                return False
            if type(answer) is dict:
                at.usage = answer.get("usage")
        state.breaker.success()
        return True

    def _client_gone(self, state: EndpointState, rule: str, record: dict[str, Any],
                     t0: float) -> None:
        """The client left before an answer was sent: nothing to send, no verdict on the
        endpoint (its trial slot is released by the caller)."""
        self.metrics.request(state.config.tier, state.name, rule, 499)
        record.update(status=499, endpoint=state.name, reason=rule, error="client_gone",
                      total_ms=round((time.perf_counter() - t0) * 1000, 3))

    def _headers(self, resp: StreamedResponse, state: EndpointState, rule: str
                 ) -> list[tuple[bytes, bytes]]:
        headers = []
        for k, v in resp.raw_headers:
            name = k.lower()
            if name in _PASS_HEADERS:
                headers.append((name, v))
        headers += [
            (b"x-edgecloud-placement", state.config.tier.encode()),
            (b"x-edgecloud-endpoint", state.name.encode()),
            (b"x-edgecloud-reason", rule.encode()),
        ]
        return headers

    async def _relay_body(self, send: Send, resp: StreamedResponse, data: bytes, usage: Any,
                          state: EndpointState, rule: str, facts: RequestFacts,
                          record: dict[str, Any], t0: float, t_up: float) -> None:
        t_done = time.perf_counter()
        status = resp.status
        headers = self._headers(resp, state, rule)
        out = data  # a translated request's answer goes back in the client's API
        if facts.api is not None and facts.original is not None:
            out = facts.api.whole(data, status, facts.original)
        headers.append((b"content-length", str(len(out)).encode()))
        record["status"] = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})
        t_end = time.perf_counter()
        added = (t_end - t0) - (t_done - t_up)
        tokens = 0
        if status < 400:
            if type(usage) is dict:  # parsed by _judge
                tokens = _count(usage.get("completion_tokens"))
                record["input_tokens"] = _count(usage.get("prompt_tokens"))
            else:
                tokens = _completion_tokens(data)
                record["input_tokens"] = _completion_tokens(data, _PROMPT_TOKENS)
            state.latency.observe_total(t_done - t_up, tokens)
        self._account(state, rule, status, facts, record, len(data), tokens, t0, t_up, t_end,
                      added)

    async def _relay_stream(self, send: Send, watch: ClientWatch, resp: StreamedResponse,
                            state: EndpointState, rule: str, facts: RequestFacts,
                            record: dict[str, Any], t0: float, t_up: float,
                            surrogates: Surrogates | None = None) -> None:
        status = resp.status
        record["status"] = status
        reply = await StreamedReply.start(send, status, self._headers(resp, state, rule))
        first: float | None = None
        loop = asyncio.get_running_loop()
        idle_s = state.config.timeout_s
        tokens = sent = 0
        cut = False
        prev = last = b""
        api = facts.api
        codec = api.codec(facts.original or {}) if api is not None and status < 400 else None
        try:
            # A stream that stalls for idle_s (give or take half) is cut; the timer is moved
            # at most twice per idle_s, not once per chunk. A client that leaves moves it to now.
            with self.deadlines.at(loop.time() + idle_s) as guard:
                watch.guard = guard
                if watch.gone:
                    raise TimeoutError
                rearm_at = loop.time() + idle_s / 2
                chunks: AsyncIterator[bytes] = (
                    resp.iter_any() if surrogates is None
                    else RestoredStream(resp.iter_any(), surrogates))
                if codec is not None:
                    chunks = api.stream(chunks, codec)  # type: ignore[union-attr]
                async for chunk in chunks:
                    prev, last = last, chunk  # usage (if asked for) is in the last events
                    if first is None:
                        first = time.perf_counter()
                    tokens += chunk.count(b"data:")
                    sent += len(chunk)
                    await reply.chunk(chunk)
                    now = loop.time()
                    if now > rearm_at:
                        guard.reschedule(now + idle_s)
                        rearm_at = now + idle_s / 2
        except TRANSPORT_ERRORS as exc:
            cut = True
            if watch.gone:
                record["error"] = "client_gone"  # the endpoint was fine
            else:
                state.breaker.failure(time.monotonic())
                state.last_error = type(exc).__name__
                self.metrics.upstream_failure(state.name, "cut")
                err = UpstreamCut(f"{state.name} failed mid-stream; the answer is cut.")
                await reply.chunk(sse_error(err) if codec is None else codec.error(err))
        finally:
            watch.guard = None
            resp.close()  # a no-op after a clean end (the connection went back to the pool)
        await reply.end()
        t_end = time.perf_counter()
        if first is not None and status < 400 and not cut:
            state.latency.observe_stream(first - t_up, t_end - t_up, max(tokens - 2, 1))
        if cut:
            record.setdefault("error", "upstream_cut")
        else:
            last = prev + last
            counted = _usage_count(last, _INPUT_KEYS)
            if counted is not None:
                record["input_tokens"] = counted
        self._account(state, rule, status, facts, record, sent, tokens, t0, t_up, t_end,
                      t_up - t0)
        counted = None if cut else _usage_count(last, _OUTPUT_KEYS)
        if counted is not None:
            record["output_tokens"] = counted  # the endpoint's own count, not the events'

    def _account(self, state: EndpointState, rule: str, status: int, facts: RequestFacts,
                 record: dict[str, Any], sent: int, tokens: int, t0: float, t_up: float,
                 t_end: float, added: float) -> None:
        tier = state.config.tier
        self.metrics.request(tier, state.name, rule, status)
        self.metrics.added_latency(added)
        record.update(placement=tier, endpoint=state.name, reason=rule, output_tokens=tokens,
                      upstream_model=state.model_id or facts.model,
                      provider=state.config.provider or ("edgecloud" if tier == "edge"
                                                         else "openai"),
                      resp_bytes=sent, upstream_ms=round((t_end - t_up) * 1000, 3),
                      added_ms=round(added * 1000, 3), total_ms=round((t_end - t0) * 1000, 3))
        price = state.config.price
        if price.input_per_mtok or price.output_per_mtok:
            record["cost_usd"] = (price.input_per_mtok * facts.prompt_tokens_estimate
                                  + price.output_per_mtok * tokens) / 1e6


def _is_stream(resp: StreamedResponse) -> bool:
    for k, v in resp.raw_headers:
        if len(k) == 12 and k.lower() == b"content-type":
            return v.startswith(b"text/event-stream")
    return False


def _body(raw: bytes, facts: RequestFacts, state: EndpointState,
          rewritten: Rewritten | None) -> Sequence[bytes | memoryview]:
    """The body for one endpoint: the client's bytes or the surrogates' (`rewritten`), with the
    endpoint's model id."""
    if rewritten is not None:
        raw, parsed, elided = rewritten.raw, rewritten.body, False
    else:
        parsed, elided = facts.body, facts.elided
    return (raw,) if state.model_id is None else with_model_parts(raw, parsed, state.model_id,
                                                                  elided)
