"""OpenTelemetry spans for the gateway: one server span per request, one client span per attempt.

Imported only when tracing is on (see tracing.py), so the SDK costs nothing when it is off.
Spans carry placement facts, never prompt text or keys. Only W3C trace context (traceparent,
tracestate) is read from clients and sent upstream: baggage is client metadata, and the gateway
does not forward client metadata to endpoints.
"""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from edgecloud.gateway.tracing import TracingSettings

_PROPAGATOR = TraceContextTextMapPropagator()
_INCOMING = (b"traceparent", b"tracestate")

# Request-log fields that become server-span attributes (the log holds no prompt text or keys).
_RECORD_ATTRIBUTES = (
    ("status", "http.response.status_code"),
    ("model", "gen_ai.request.model"),
    ("placement", "edgecloud.placement"),
    ("endpoint", "edgecloud.endpoint"),
    ("reason", "edgecloud.reason"),
    ("rule", "edgecloud.rule"),
    ("stream", "edgecloud.stream"),
    ("images", "edgecloud.images"),
    ("fallbacks", "edgecloud.fallbacks"),
    ("body_bytes", "http.request.body.size"),
    ("resp_bytes", "http.response.body.size"),
    ("region", "edgecloud.region"),
    ("key", "edgecloud.key_name"),
    ("error", "error.type"),
    ("upstream_model", "gen_ai.response.model"),
    ("provider", "gen_ai.provider.name"),
    ("input_tokens", "gen_ai.usage.input_tokens"),
    ("output_tokens", "gen_ai.usage.output_tokens"),
)
# OpenTelemetry GenAI semantic conventions: the operation each route performs.
_OPERATIONS = {"/v1/chat/completions": "chat", "/v1/responses": "chat", "/v1/messages": "chat",
               "/v1/completions": "text_completion", "/v1/embeddings": "embeddings"}


class GatewayTracer:
    """The gateway's tracer provider: OTLP/HTTP exporter behind a batch span processor."""

    def __init__(self, settings: TracingSettings, scope_name: str = "edgecloud.gateway") -> None:
        sampler: Sampler | None = None
        if settings.sample_ratio is not None:
            sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        # A provider of our own, not the global one: the gateway's spans go where its config says.
        self.provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: settings.service_name}),
            sampler=sampler,
            shutdown_on_exit=False,
        )
        # Schedule delay, queue and batch sizes follow OTEL_BSP_* (defaults 5 s, 2048, 512).
        self.exporter = OTLPSpanExporter(endpoint=settings.endpoint)
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer(scope_name)  # the node's spans use it too

    def begin(self, scope: MutableMapping[str, Any]) -> RequestTrace:
        """Start the server span of one request, continuing the client's trace if it sent one."""
        carrier: dict[str, str] = {}
        for k, v in scope["headers"]:
            if k in _INCOMING:
                carrier[k.decode()] = v.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        path = scope["path"]
        span = self.tracer.start_span(
            f"POST {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": path, "http.route": path,
                        "gen_ai.operation.name": _OPERATIONS.get(path, "chat")},
        )
        return RequestTrace(self.tracer, span)

    def shutdown(self, flush_timeout_s: float = 2.0) -> None:
        """Export what is queued and stop the exporter thread (blocking: run it in a thread)."""
        # With the collector down the exporter retries for its whole timeout (10 s), and the
        # SDK's flush does not bound that: give the queued spans a bounded try on a thread of
        # their own, then stop the retries so that the gateway exits in time.
        flusher = threading.Thread(target=self.provider.force_flush, daemon=True)
        flusher.start()
        flusher.join(flush_timeout_s)
        if flusher.is_alive():
            self.exporter.shutdown()
            flusher.join(flush_timeout_s)
        self.provider.shutdown()


class RequestTrace:
    """The spans of one gateway request."""

    __slots__ = ("tracer", "span", "_context", "_unsampled")

    def __init__(self, tracer: trace.Tracer, span: Span) -> None:
        self.tracer = tracer
        self.span = span
        self._context = trace.set_span_in_context(span)
        self._unsampled: UpstreamAttempt | None = None

    def attempt(
        self, endpoint: str, tier: str, url: str, number: int, body_bytes: int
    ) -> UpstreamAttempt:
        """Start the client span of one upstream attempt (it carries the headers to send)."""
        if not self.span.is_recording():
            # Sampled out: its children would be too, so skip them and pass the (unsampled)
            # trace context on as it is; the endpoint then does not record either.
            if self._unsampled is None:
                self._unsampled = UpstreamAttempt(None, self._context)
            return self._unsampled
        parts = urlsplit(url)  # host, port and path only: a URL's userinfo never goes in a span
        span = self.tracer.start_span(
            f"POST {parts.path}",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "server.address": parts.hostname or "",
                "server.port": parts.port or (443 if parts.scheme == "https" else 80),
                "url.path": parts.path,
                "edgecloud.endpoint": endpoint,
                "edgecloud.tier": tier,
                "edgecloud.attempt": number,
                "http.request.body.size": body_bytes,
            },
        )
        return UpstreamAttempt(span, trace.set_span_in_context(span))

    def finish(self, record: dict[str, Any]) -> None:
        """End the server span with the request's log record as attributes."""
        span = self.span
        if span.is_recording():
            attrs = {
                name: record[key] for key, name in _RECORD_ATTRIBUTES if record.get(key) is not None
            }
            span.set_attributes(attrs)
            status = record.get("status")
            if status is None:
                span.set_attribute("error.type", record.get("error") or "client_gone")
            elif status >= 500:
                span.set_status(Status(StatusCode.ERROR, str(record.get("reason") or status)))
        span.end()


class UpstreamAttempt:
    """The client span of one upstream attempt and the trace headers that go with it."""

    __slots__ = ("span", "headers")

    def __init__(self, span: Span | None, context: Context) -> None:
        self.span = span
        self.headers: dict[str, str] = {}
        _PROPAGATOR.inject(self.headers, context=context)

    def end(self, status: int | None, error: str | None = None) -> None:
        """End it: the HTTP status if one came back, else the error's name."""
        span = self.span
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        elif status is not None and status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()
