"""Forwarding one placed request: try the decision's endpoints in order, stream the answer back.

Fallback happens only before the first byte reaches the client, and only along the decision's
order, which policy built from allowed endpoints alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from edgecloud.api.asgi import Receive, Send, send_error, sse_event
from edgecloud.gateway.errors import NoAllowedEndpoint, UpstreamFailed
from edgecloud.gateway.h1 import H1Response
from edgecloud.gateway.metrics import GatewayMetrics
from edgecloud.gateway.policy import PlacementDecision
from edgecloud.gateway.pseudonymize import Rewritten, Surrogates, restore_answer
from edgecloud.gateway.request import RequestFacts, with_model_parts
from edgecloud.gateway.restore_stream import RestoredStream
from edgecloud.gateway.upstream import TRANSPORT_ERRORS, Upstream

if TYPE_CHECKING:
    from edgecloud.gateway.otel import RequestTrace

_PASS_HEADERS = frozenset({b"content-type", b"content-encoding", b"retry-after", b"x-request-id",
                           b"openai-processing-ms"})
_COMPLETION_TOKENS = b'"completion_tokens":'


def _completion_tokens(body: bytes) -> int:
    """usage.completion_tokens found by a byte search (no second parse of the answer)."""
    i = body.rfind(_COMPLETION_TOKENS)
    if i < 0:
        return 0
    j = i + len(_COMPLETION_TOKENS)
    while j < len(body) and body[j] in b" \t":
        j += 1
    k = j
    while k < len(body) and 48 <= body[k] <= 57:
        k += 1
    return int(body[j:k]) if k > j else 0


class Forwarder:
    """Sends placed requests upstream and relays the answers; records what happened."""

    def __init__(self, upstreams: dict[str, Upstream], metrics: GatewayMetrics) -> None:
        self.upstreams = upstreams
        self.metrics = metrics

    async def forward(self, send: Send, receive: Receive, path: str, raw: bytes,
                      facts: RequestFacts, decision: PlacementDecision, record: dict[str, Any],
                      t0: float, trace: RequestTrace | None = None,
                      rewritten: Rewritten | None = None) -> None:
        failures: list[str] = []
        rule = decision.rule
        for attempt, state in enumerate(decision.order):
            now = time.monotonic()
            if not state.breaker.acquire(now):
                failures.append(f"{state.name}: circuit open")
                continue
            up = self.upstreams[state.name]
            # A pseudonymised request: cloud endpoints get the surrogates, edge ones the original.
            surrogates = None
            if rewritten is not None and state.config.tier == "cloud":
                surrogates = rewritten.surrogates
                body = (rewritten.raw,) if state.model_id is None else with_model_parts(
                    rewritten.raw, rewritten.body, state.model_id)
            else:
                body = (raw,) if state.model_id is None else with_model_parts(
                    raw, facts.body, state.model_id, facts.elided)
            span = trace_headers = None
            if trace is not None:
                span = trace.attempt(state.name, state.config.tier, up.base + path, attempt + 1,
                                     sum(len(p) for p in body))
                trace_headers = span.headers
            state.in_flight += 1
            t_up = time.perf_counter()
            try:
                resp = await up.post(path, body, trace_headers)
            except TRANSPORT_ERRORS as exc:
                if span is not None:
                    span.end(None, type(exc).__name__)
                state.in_flight -= 1
                state.breaker.failure(time.monotonic())
                state.last_error = type(exc).__name__
                self.metrics.fallback(state.name, "connect")
                failures.append(f"{state.name}: {type(exc).__name__}")
                continue
            last = attempt + 1 == len(decision.order)
            if resp.status >= 500 or (resp.status == 429 and not last):
                resp.release()
                if span is not None:
                    span.end(resp.status)
                state.in_flight -= 1
                if resp.status >= 500:
                    state.breaker.failure(time.monotonic())
                else:
                    state.breaker.success()  # 429: alive, just full
                self.metrics.fallback(state.name, f"status_{resp.status}")
                failures.append(f"{state.name}: HTTP {resp.status}")
                continue
            if attempt > 0:
                rule = "fallback"
            record["fallbacks"] = attempt
            try:
                await self._relay(send, receive, resp, state, rule, facts, record, t0, t_up,
                                  surrogates)
            finally:
                state.in_flight -= 1
                if span is not None:
                    span.end(record.get("status"), record.get("error"))
            return
        # Nothing answered. Fail closed with the rule that restricted the request, if any.
        detail = "; ".join(failures) or "no endpoint was tried"
        err: NoAllowedEndpoint | UpstreamFailed
        if decision.restricted:
            err = NoAllowedEndpoint(decision.rule, f"every allowed endpoint failed ({detail}); "
                                    "the request was not sent anywhere else")
        else:
            err = UpstreamFailed("fallback", f"every endpoint failed ({detail})")
        self.metrics.refusal(err.rule)
        self.metrics.request("none", "none", err.rule, err.status)
        record.update(status=err.status, reason=err.rule, error=err.code)
        await send_error(send, err, [(b"x-edgecloud-reason", err.rule.encode())])
        record["total_ms"] = round((time.perf_counter() - t0) * 1000, 3)

    async def _relay(self, send: Send, receive: Receive, resp: H1Response, state: Any, rule: str,
                     facts: RequestFacts, record: dict[str, Any], t0: float,
                     t_up: float, surrogates: Surrogates | None = None) -> None:
        tier = state.config.tier
        headers = []
        streaming = False
        for k, v in resp.raw_headers:
            name = k.lower()
            if name in _PASS_HEADERS:
                headers.append((name, v))
                if name == b"content-type":
                    streaming = v.startswith(b"text/event-stream")
        headers += [
            (b"x-edgecloud-placement", tier.encode()),
            (b"x-edgecloud-endpoint", state.name.encode()),
            (b"x-edgecloud-reason", rule.encode()),
        ]
        status = resp.status
        tokens = 0
        sent = 0
        cut = False
        if not streaming:
            try:
                async with asyncio.timeout(state.config.timeout_s):
                    data = await resp.read()
            except TRANSPORT_ERRORS as exc:
                resp.close()
                await self._upstream_cut(send, state, rule, exc, record, t0)
                return
            if surrogates is not None and status < 400:
                data = restore_answer(data, surrogates)
            t_done = time.perf_counter()
            headers.append((b"content-length", str(len(data)).encode()))
            sent = len(data)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            t_end = time.perf_counter()
            added = (t_end - t0) - (t_done - t_up)
            if status < 400:
                tokens = _completion_tokens(data)
                state.latency.observe_total(t_done - t_up, tokens)
        else:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            first: float | None = None
            # The next receive() completes when the client goes away: then stop the upstream
            # (a model server stops generating when its connection closes).
            gone = asyncio.ensure_future(receive())
            loop = asyncio.get_running_loop()
            idle_s = state.config.timeout_s
            try:
                # A stream that stalls for idle_s (give or take half) is cut; the timer is moved
                # at most twice per idle_s, not once per chunk.
                async with asyncio.timeout_at(loop.time() + idle_s) as guard:
                    rearm_at = loop.time() + idle_s / 2
                    chunks = (resp.iter_any() if surrogates is None
                              else RestoredStream(resp.iter_any(), surrogates))
                    async for chunk in chunks:
                        if first is None:
                            first = time.perf_counter()
                        tokens += chunk.count(b"data:")
                        sent += len(chunk)
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                        if gone.done():
                            cut = True
                            record["error"] = "client_gone"
                            state.breaker.success()  # the endpoint was fine
                            resp.close()
                            break
                        now = loop.time()
                        if now > rearm_at:
                            guard.reschedule(now + idle_s)
                            rearm_at = now + idle_s / 2
            except (*TRANSPORT_ERRORS, asyncio.CancelledError) as exc:
                cut = True
                resp.close()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                state.breaker.failure(time.monotonic())
                await send({"type": "http.response.body", "more_body": True, "body": sse_event(
                    {"error": {"message": f"{state.name} failed mid-stream; the answer is cut.",
                               "type": "upstream_error", "param": None,
                               "code": "upstream_cut"}})})
            finally:
                if not gone.done():
                    gone.cancel()
            await send({"type": "http.response.body", "body": b""})
            t_end = time.perf_counter()
            added = t_up - t0
            if first is not None and status < 400 and not cut:
                state.latency.observe_stream(first - t_up, t_end - t_up, max(tokens - 2, 1))
        if status < 500 and not cut:
            state.breaker.success()
        self.metrics.request(tier, state.name, rule, status)
        self.metrics.added_latency(added)
        record.update(status=status, placement=tier, endpoint=state.name, reason=rule,
                      resp_bytes=sent, upstream_ms=round((t_end - t_up) * 1000, 3),
                      added_ms=round(added * 1000, 3), total_ms=round((t_end - t0) * 1000, 3))
        if cut:
            record.setdefault("error", "upstream_cut")
        price = state.config.price
        if price.input_per_mtok or price.output_per_mtok:
            record["cost_usd"] = (price.input_per_mtok * facts.prompt_tokens_estimate
                                  + price.output_per_mtok * tokens) / 1e6

    async def _upstream_cut(self, send: Send, state: Any, rule: str, exc: BaseException,
                            record: dict[str, Any], t0: float) -> None:
        state.breaker.failure(time.monotonic())
        err = UpstreamFailed(rule, f"{state.name} failed while answering ({type(exc).__name__})")
        self.metrics.request(state.config.tier, state.name, rule, err.status)
        record.update(status=err.status, endpoint=state.name, reason=rule, error=err.code,
                      total_ms=round((time.perf_counter() - t0) * 1000, 3))
        await send_error(send, err, [(b"x-edgecloud-reason", rule.encode())])
