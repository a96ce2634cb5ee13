"""The gateway's raw ASGI app: read, inspect, place, forward, stream back, account.

The request body is parsed once (orjson) for policy and forwarded as the original bytes; answers
are streamed through chunk by chunk as they arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from edgecloud.api.asgi import (
    POST,
    ClientDisconnected,
    Receive,
    Routes,
    Scope,
    Send,
    dispatch,
    lifespan,
    read_body,
    send_bytes,
    send_error,
    send_json,
)
from edgecloud.api.clientwatch import follow
from edgecloud.api.errors import (
    APIError,
    BadRequest,
    ModelNotFound,
    Unauthorized,
    UnsupportedMediaType,
)
from edgecloud.gateway.attester import AttestationCollector, attesters_for
from edgecloud.gateway.config import ApiKeyConfig, GatewayConfig
from edgecloud.gateway.errors import NoAllowedEndpoint
from edgecloud.gateway.forward import Exchange, Forwarder
from edgecloud.gateway.health import CircuitBreaker, EndpointState
from edgecloud.gateway.limits import Limiter
from edgecloud.gateway.metrics import GatewayMetrics
from edgecloud.gateway.metrics_share import SHARE_EVERY_S, WorkerShare
from edgecloud.gateway.policy import Hints, PlacementDecision, PlacementPolicy
from edgecloud.gateway.pseudonymize import Rewritten
from edgecloud.gateway.request import (
    RequestFacts,
    inspect_chat,
    inspect_completion,
    inspect_count_tokens,
    inspect_embeddings,
    inspect_translated,
    parse_body,
    parse_json,
)
from edgecloud.gateway.tracing import resolve_tracing
from edgecloud.gateway.translate import MESSAGES, RESPONSES, ClientAPI
from edgecloud.gateway.upstream import Upstream
from edgecloud.logs import AccessLog, log_event

if TYPE_CHECKING:
    from edgecloud.gateway.otel import GatewayTracer

_LOGGER = "edgecloud.gateway"
_events = logging.getLogger(_LOGGER)
_PLACEMENTS = ("edge", "cloud")
_SENSITIVITIES = ("public", "private")
_FORM_TYPES = (b"application/x-www-form-urlencoded", b"text/plain")
REPROBE_S = 0.1  # the quickest a refused request makes the down endpoints be probed again


class GatewayApp:
    """The ASGI callable; owns endpoint state, upstream clients, policy, metrics and log."""

    def __init__(self, config: GatewayConfig, log: AccessLog | None = None,
                 verify_upstream_tls: bool = True, worker: tuple[Path, int] | None = None
                 ) -> None:
        """`worker`: (directory, index) of one worker of several, whose /metrics merges every
        worker's (metrics_share.py)."""
        self.config = config
        lim = config.limits
        self.states = [
            EndpointState(cfg, CircuitBreaker(lim.breaker_failures, lim.breaker_open_s,
                                              lim.breaker_trial_s), model_id=cfg.model)
            for cfg in config.endpoints
        ]
        self.attesters = attesters_for(self.states)
        self.upstreams = {s.name: Upstream(s, verify_tls=verify_upstream_tls,
                                           attester=self.attesters.get(s.name))
                          for s in self.states}
        self.policy = PlacementPolicy(config.policy)
        self.metrics = GatewayMetrics(self.states)
        self.share = (None if worker is None
                      else WorkerShare(worker[0], worker[1], self.metrics.registry))
        if self.attesters:
            self.metrics.registry.register(AttestationCollector(list(self.attesters.values())))
        self.log = log or AccessLog(_LOGGER)
        self.keys: dict[str, ApiKeyConfig] = {k.sha256: k for k in config.auth.keys}
        allow = config.models.allow
        self.accepted: frozenset[str] | None = (
            frozenset(allow) | frozenset(config.models.aliases) if allow is not None else None
        )
        self.forwarder = Forwarder(self.upstreams, self.metrics)
        self.limiter = Limiter(config, self.metrics)
        self.tracing = resolve_tracing(config.tracing, os.environ)
        # None while tracing is off: then no OpenTelemetry object exists, per request or at all.
        self.tracer: GatewayTracer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reprobe = asyncio.Event()  # a request found no endpoint up: probe the down now

        self.routes = Routes()
        # The proxied routes: _proxy with the upstream path, the body check and, for Responses
        # and Messages, the client API their chat translation answers in (gateway/translate.py).
        for path, upstream_path, inspect, api in (
            ("/v1/chat/completions", "/chat/completions", inspect_chat, None),
            ("/v1/completions", "/completions", inspect_completion, None),
            ("/v1/responses", "/chat/completions", partial(inspect_translated, RESPONSES),
             RESPONSES),
            ("/v1/messages", "/chat/completions", partial(inspect_translated, MESSAGES),
             MESSAGES),
            ("/v1/messages/count_tokens", "/messages/count_tokens", inspect_count_tokens,
             MESSAGES),
            ("/v1/embeddings", "/embeddings", inspect_embeddings, None),
        ):
            self.routes.add(path, partial(self._proxy, upstream_path=upstream_path,
                                          inspect=inspect, api=api), POST)
        self.routes.add("/healthz", self._healthz, None)
        self.routes.add("/readyz", self._readyz, None)
        self.routes.add("/metrics", self._metrics, None)
        self.routes.add("/v1/models", self._models, None)

    # -- ASGI entry ------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await dispatch(self.routes, scope, receive, send)
        elif kind == "lifespan":
            await lifespan(receive, send, self.start, self.stop)

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"status": "ok"})

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> int:
        now = time.monotonic()
        ready = [s.name for s in self.states if s.available(now)]
        await send_json(send, 200 if ready else 503,
                        {"status": "ready" if ready else "no endpoint available",
                         "available": ready})
        return 200 if ready else 503

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.share is None:
            body = self.metrics.render()
        else:  # one worker of several: theirs merged in
            body = self.share.render(await asyncio.to_thread(self.share.others))
        await send_bytes(send, 200, body,
                         [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")])

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._authenticate(scope)
        await send_json(send, 200, {"object": "list", "data": self._model_list()})

    def _model_list(self) -> list[dict[str, Any]]:
        if self.accepted is not None:
            names = sorted(self.accepted)
        else:
            names = ["auto", *sorted({s.model_id for s in self.states if s.model_id})]
        return [{"id": n, "object": "model", "created": 0, "owned_by": "edgecloud"} for n in names]

    # -- lifespan -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.tracing is not None:
            from edgecloud.gateway.otel import GatewayTracer

            self.tracer = GatewayTracer(self.tracing)
            for warning in self.tracing.warnings:
                log_event(_events, "tracing.warning", logging.WARNING, message=warning)
        for up in self.upstreams.values():
            await up.start()
        # Attest before the first probe: a confidential endpoint is unreachable until then.
        await asyncio.gather(*(a.start() for a in self.attesters.values()))
        await self._probe_all()
        await self.limiter.start(self.states)
        self._tasks.append(asyncio.create_task(self._health_loop()))
        self._tasks.append(asyncio.create_task(self._flush_loop()))
        if self.share is not None:
            self._tasks.append(asyncio.create_task(self._share_loop()))
        log_event(
            _events, "gateway.started",
            endpoints={s.name: ("healthy" if s.healthy else s.last_error) for s in self.states},
            attested={n: a.status.attested(time.monotonic()) for n, a in self.attesters.items()},
            tracing=None if self.tracing is None else {
                "endpoint": self.tracing.endpoint, "service": self.tracing.service_name,
                "sample_ratio": self.tracing.sample_ratio},
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.limiter.stop()
        await asyncio.gather(*(a.stop() for a in self.attesters.values()))
        for up in self.upstreams.values():
            await up.close()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # exports what is still queued
            self.tracer = None
        if self.share is not None:  # the last counts stay for the workers still running
            await asyncio.to_thread(self.share.write, self.share.encode())
        self.log.flush()
        log_event(_events, "gateway.stopped")

    async def _probe_all(self) -> None:
        await asyncio.gather(*(up.probe() for up in self.upstreams.values()))

    async def _health_loop(self) -> None:
        """Probe every endpoint each interval; between them, when a request was refused for
        want of an endpoint, probe the down ones at once (at most every REPROBE_S), so an
        edge that comes back is used within about that, not a whole interval later."""
        interval = self.config.limits.health_interval_s
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        while True:
            try:
                await asyncio.wait_for(self._reprobe.wait(), max(due - loop.time(), 0))
            except TimeoutError:
                await self._probe_all()
                due = loop.time() + interval
                continue
            down = [self.upstreams[s.name] for s in self.states if not s.healthy]
            await asyncio.gather(*(up.probe() for up in down))
            await asyncio.sleep(REPROBE_S)
            self._reprobe.clear()

    async def _share_loop(self) -> None:
        share = self.share
        assert share is not None
        while True:
            try:
                await asyncio.to_thread(share.write, share.encode())
            except OSError as exc:  # a full disk, say: the others see this worker's older counts
                log_event(_events, "metrics.share_failed", logging.WARNING,
                          error=type(exc).__name__)
            await asyncio.sleep(SHARE_EVERY_S)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self.log.flush()

    # -- the proxied routes ------------------------------------------------------------------
    def _authenticate(
        self, scope: Scope, authorization: bytes | None = None
    ) -> ApiKeyConfig | None:
        if not self.keys:
            return None
        if authorization is None:
            for k, v in scope["headers"]:
                if k == b"authorization":
                    authorization = v
                    break
        if authorization is None or not authorization[:7].lower() == b"bearer ":
            raise Unauthorized("Missing API key: send Authorization: Bearer <key>.")
        key = self.keys.get(hashlib.sha256(authorization[7:].strip()).hexdigest())
        if key is None:
            raise Unauthorized("Invalid API key.")
        return key

    def _hints(self, headers: dict[bytes, bytes], key: ApiKeyConfig | None) -> Hints:
        region = headers.get(b"x-edgecloud-region")
        sens = headers.get(b"x-edgecloud-sensitivity")
        deadline = headers.get(b"x-edgecloud-deadline-ms")
        pin = headers.get(b"x-edgecloud-placement")
        sensitivity = sens.decode("latin-1").strip().lower() if sens else None
        if sensitivity is not None and sensitivity not in _SENSITIVITIES:
            raise BadRequest("x-edgecloud-sensitivity must be public or private.",
                             param="x-edgecloud-sensitivity")
        from_key = False
        if key is not None and key.sensitivity == "private" and sensitivity != "private":
            sensitivity, from_key = "private", True  # a key's private default cannot be lifted
        deadline_ms = None
        if deadline:
            try:
                deadline_ms = float(deadline)
            except ValueError:
                deadline_ms = -1.0
            if not 0 < deadline_ms < 1e9:
                raise BadRequest("x-edgecloud-deadline-ms must be a positive number.",
                                 param="x-edgecloud-deadline-ms")
        pinned = pin.decode("latin-1").strip().lower() if pin else None
        if pinned is not None and pinned not in _PLACEMENTS:
            raise BadRequest("x-edgecloud-placement must be edge or cloud.",
                             param="x-edgecloud-placement")
        region_s = region.decode("latin-1").strip().lower() if region else None
        if not region_s and key is not None:
            region_s = key.region
        return Hints(region_s or None, sensitivity, from_key, deadline_ms, pinned)

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, upstream_path: str,
                     inspect: Callable[[dict[str, Any]], RequestFacts],
                     api: ClientAPI | None = None) -> None:
        t0 = time.perf_counter()
        record: dict[str, Any] = {"event": "request", "route": scope["path"]}
        trace = None if self.tracer is None else self.tracer.begin(scope)
        # Any, not Optional: compiled, `finally` reads a variable with the type the try body
        # narrowed it to, and a None there would raise (edgecloud/compiled.py).
        watch: Any = None
        gate: Any = None
        try:
            headers = {k: v for k, v in scope["headers"] if k in _WANTED}
            try:
                key = self._authenticate(scope, headers.get(b"authorization")
                                         or _bearer(headers.get(b"x-api-key")))
                if key is not None:
                    record["key"] = key.name
                ctype = headers.get(b"content-type")
                if ctype is not None and b"json" not in ctype and not ctype.startswith(_FORM_TYPES):
                    raise UnsupportedMediaType("Send the body as application/json.")
                raw = await read_body(receive, self.config.limits.max_body_bytes, scope)
                body, elided = parse_body(raw)
                facts = inspect(body)
                facts.elided = elided
                if facts.api is not None:
                    raw = orjson.dumps(facts.body)  # what goes upstream: the chat translation
                self._check_model(facts.model)
                hints = self._hints(headers, key)
                if self.limiter.applies(key):
                    gate = self.limiter.gate(key, facts)
                    send = gate.wrap(send)
                decision = self.policy.choose_endpoint(
                    facts, hints, self.states, time.monotonic(), self.limiter.cloud_spend()
                )
                rewritten: Rewritten | None = None
                if decision.without_surrogates is not None:
                    decision, rewritten = self._with_surrogates(decision, raw, facts, record)
                if gate is not None:
                    decision = await gate.place(decision)
                record.update(model=facts.model, stream=facts.stream, images=facts.images,
                              body_bytes=len(raw), rule=decision.rule)
                if hints.region:
                    record["region"] = hints.region
                if decision.panic:
                    record["panic"] = True
                watch = follow(scope, receive)
                failures: list[str] = []
                exchange = Exchange(send, watch, upstream_path, raw, facts, record, t0, trace)
                failed = await self.forwarder.forward(exchange, decision, rewritten, failures)
                if failed is not None and decision.surrogates_if_failed and not watch.gone:
                    # The edge failed before a byte reached the client (it died before a probe
                    # or the breaker noticed): the cloud, with surrogates, if the policy allows.
                    fallback = self.policy.surrogate_fallback(
                        failed, facts, hints, self.states, time.monotonic(),
                        self.limiter.cloud_spend())
                    if fallback is not None:
                        fallback, rewritten = self._with_surrogates(fallback, raw, facts, record)
                        if gate is not None:
                            fallback = await gate.place(fallback)
                        if fallback.panic:
                            record["panic"] = True
                        failed = await self.forwarder.forward(exchange, fallback, rewritten,
                                                              failures)
                if failed is not None:
                    raise failed
            except ClientDisconnected:
                return
            except APIError as err:  # raised before anything was sent
                await self._refuse(send, err, record, t0, api)
                return
            except Exception as exc:
                # A defect, never an answer to a bad body: an OpenAI-style 500 if nothing was
                # sent yet (the log names the exception, never the body).
                log_event(_events, "gateway.error", logging.ERROR, route=scope["path"],
                          exception=type(exc).__name__, where=_where(exc))
                if "status" in record:
                    raise
                await self._refuse(send, APIError("The gateway failed on this request.",
                                                  code="internal_error"), record, t0, api)
                return
            self.log.write(record)
        finally:
            if watch is not None:
                watch.stop()
            if gate is not None:
                gate.finish(record)
            if trace is not None:
                trace.finish(record)

    def _with_surrogates(self, decision: PlacementDecision, raw: bytes, facts: RequestFacts,
                         record: dict[str, Any]) -> tuple[PlacementDecision, Rewritten | None]:
        """policy.with_surrogates on the whole body, and the kinds replaced (never the values)
        counted and logged. Raises what it raises (nothing was sent)."""
        # The parse left large images out: rewrite from the whole body.
        whole = parse_json(raw) if facts.elided else facts.body
        decision, rewritten = self.policy.with_surrogates(decision, whole)
        if rewritten is not None:
            record["pseudonymized"] = rewritten.surrogates.kinds
            self.metrics.pseudonymized(rewritten.surrogates.kinds)
        return decision, rewritten

    async def _refuse(self, send: Send, err: APIError, record: dict[str, Any],
                      t0: float, api: ClientAPI | None = None) -> None:
        reason = getattr(err, "rule", None) or f"request.{err.code or err.type}"
        if isinstance(err, NoAllowedEndpoint):
            self._reprobe.set()
        self.metrics.refusal(reason)
        self.metrics.request("none", "none", reason, err.status)
        record.update(status=err.status, reason=reason, error=err.code)
        extra = [(b"x-edgecloud-reason", reason.encode())]
        if api is not None and api.error_body is not None:  # in the client API's own shape
            extra += [(k.encode(), v.encode()) for k, v in err.headers.items()]
            await send_bytes(send, err.status, api.error_body(err),
                             [(b"content-type", b"application/json"), *extra])
        else:
            await send_error(send, err, extra)
        record["total_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        self.log.write(record)

    def _check_model(self, model: str) -> None:
        if self.accepted is not None and model not in self.accepted:
            raise ModelNotFound(f"The model {model!r} does not exist here; see /v1/models.",
                                param="model")


def _bearer(key: bytes | None) -> bytes | None:
    """An Anthropic client's x-api-key, as the Authorization value the key check reads."""
    return None if key is None else b"Bearer " + key


_WANTED = frozenset({
    b"authorization", b"x-api-key", b"content-type", b"x-edgecloud-region",
    b"x-edgecloud-sensitivity", b"x-edgecloud-deadline-ms", b"x-edgecloud-placement",
})


def _where(exc: BaseException) -> str:
    """The file and line an exception came from: a defect's place, with nothing of the request."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
