"""OpenTelemetry spans for the node: a server span per generation with its queue, prefill and
decode phases, continuing the caller's trace (the gateway's `traceparent`).

Imported only when tracing is on (see NodeApp), so it costs nothing when off. The spans are
written once, when a request ends, from the times the engine already keeps: nothing is added
per token. They carry counts and times, never prompt text or keys. The exporter and its settings
are the gateway's (same OTEL_* environment, same OTLP/HTTP exporter).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from edgecloud.gateway.otel import GatewayTracer
from edgecloud.gateway.tracing import TracingSettings
from edgecloud.node.engine import GenerationRequest

_PROPAGATOR = TraceContextTextMapPropagator()
_INCOMING = (b"traceparent", b"tracestate")
_OPERATIONS = {"/v1/completions": "text_completion", "/v1/embeddings": "embeddings"}


class NodeTracer:
    """Writes each finished request's spans; shut down with the node."""

    def __init__(self, settings: TracingSettings) -> None:
        self._otlp = GatewayTracer(settings, "edgecloud.node")
        self.tracer = self._otlp.tracer

    def record(self, headers: list[tuple[bytes, bytes]], route: str, model: str,
               req: GenerationRequest, status: int, arrived: float) -> None:
        """The spans of one generation request (times are perf_counter seconds)."""
        carrier = {k.decode(): v.decode("latin-1") for k, v in headers if k in _INCOMING}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        now_perf, now_ns = time.perf_counter(), time.time_ns()

        def ns(t: float) -> int:
            return now_ns - int((now_perf - t) * 1e9)

        attrs: dict[str, Any] = {
            "http.request.method": "POST", "http.route": route,
            "http.response.status_code": status,
            "gen_ai.operation.name": _OPERATIONS.get(route, "chat"),
            "gen_ai.provider.name": "edgecloud",
            "gen_ai.request.model": model, "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": len(req.prompt),
            "gen_ai.usage.output_tokens": req.output_tokens,
            "edgecloud.cached_tokens": req.cached_tokens,
        }
        span = self.tracer.start_span(f"POST {route}", context=parent, kind=SpanKind.SERVER,
                                      attributes=attrs, start_time=ns(arrived))
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        ctx = trace.set_span_in_context(span)
        phases: tuple[tuple[str, float | None, float | None, dict[str, Any]], ...] = (
                  ("queue", arrived, req.admitted_at, {}),
                  ("prefill", req.admitted_at, req.first_token_at,
                   {"gen_ai.usage.input_tokens": len(req.prompt), "edgecloud.images":
                    req.media_read}),
                  ("decode", req.first_token_at, req.finished_at,
                   {"gen_ai.usage.output_tokens": req.output_tokens}))
        for name, start, end, extra in phases:
            if start is not None and end is not None:
                child = self.tracer.start_span(name, context=ctx, start_time=ns(start),
                                               attributes=extra)
                child.end(end_time=ns(end))
        span.end(end_time=now_ns)

    def shutdown(self) -> None:
        self._otlp.shutdown()
