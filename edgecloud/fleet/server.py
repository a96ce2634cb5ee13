"""The fleet server: serves the TUF repository over HTTP and the device API (raw ASGI).

Routes:
  GET  /tuf/metadata/FILE     signed metadata (small; cached in memory by mtime)
  GET  /tuf/targets/PATH      model files, with HTTP Range for resumable downloads
  POST /v1/devices/enrol      an enrolment token + a device id -> that device's credential
  POST /v1/devices/report     a device's version, health, metrics and events (its credential)
  POST /v1/fleet/enrolment-tokens   issue an enrolment token (operator)
  GET  /v1/fleet/status       who runs what, rollouts and their gate values, recent failures
                              (operator)
  GET  /metrics               Prometheus metrics (edgecloud/fleet/metrics.py) (operator)
  GET  /healthz, /readyz
Reports are kept in memory (latest per device) and written to SQL in batches; a batch leaves
memory only once it is written. The TUF routes need no credential: metadata and targets are
signed, and the agent trusts nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import prometheus_client
from pydantic import ValidationError

from edgecloud.api import asgi
from edgecloud.api.asgi import (
    GET,
    POST,
    Receive,
    Scope,
    Send,
    StreamedReply,
    header,
    read_body,
    send_bytes,
    send_json,
)
from edgecloud.api.errors import APIError, BadRequest, NotFound, Unauthorized
from edgecloud.api.guard import ServingLimits
from edgecloud.fleet.controller import ControllerView, ControlPass, control_once
from edgecloud.fleet.credentials import (
    DEVICE_PREFIX,
    OperatorToken,
    RateLimiter,
    bearer,
    is_loopback,
    split_token,
)
from edgecloud.fleet.enrolment import DeviceRegistry
from edgecloud.fleet.errors import CredentialError, FleetError
from edgecloud.fleet.lease import ControllerLease
from edgecloud.fleet.metrics import FleetMetrics, FleetSnapshot
from edgecloud.fleet.mirror import TIMESTAMP_MAX_AGE_S, Publisher, open_sink
from edgecloud.fleet.polling import NEXT_POLL_HEADER, next_poll_hint
from edgecloud.fleet.repository import ModelRepository
from edgecloud.fleet.rollout import ModelRelease
from edgecloud.fleet.state import DeviceReport, EnrolmentLimited, FleetStore, masked_url
from edgecloud.logs import log_event

log = logging.getLogger("edgecloud.fleet")

CHUNK = 1 << 20
REPORT_LIMIT = 64 * 1024
STATUS_DEVICES = 1000


class Forbidden(APIError, status=403, type="permission_error", code="forbidden"):
    """The credential is valid but does not allow this."""


class RateLimited(APIError, status=429, type="rate_limit_error", code="rate_limited"):
    """Too many reports or enrolments; the answer says when to retry."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, headers={"retry-after": str(max(1, math.ceil(retry_after_s)))})


class Unavailable(APIError, status=503, type="server_error", code="database_unavailable"):
    """The fleet database cannot take the write now; retry later."""


class RangeNotSatisfiable(Exception):
    """A Range header that no byte of the file satisfies (an HTTP 416)."""


@dataclass
class ServerConfig:
    repo: Path
    db_url: str = field(repr=False)  # may hold a password: never printed
    keys_dir: Path | None = None
    tick_s: float = 2.0
    flush_s: float = 0.005  # how long a report waits for others to share its transaction
    rate_limit_bps: float | None = None  # per target download; a fleet bandwidth cap
    operator_token: str | None = field(default=None, repr=False)
    insecure: bool = False  # no credentials at all: a developer's laptop only
    report_rate: float = 1.0  # reports per second per device, sustained
    report_burst: float = 10.0
    enrol_rate: float = 20.0  # enrolments per second (burst 5 s of it): bounds database writes
    enrol_burst: float | None = None  # default: 5 s of enrol_rate
    enrol_rate_per_address: float = 5.0  # attempts per second per source address (burst 5 s)
    max_devices: int = 100_000
    controller: bool = True
    poll_interval_s: float | None = None  # told to every device with each report's answer
    shed_write_lag_s: float = 1.0  # group writes slower than this: devices told to wait longer
    mirrors: list[str] = field(default_factory=list)  # DIR or s3://BUCKET[/PREFIX]
    mirror_endpoint_url: str | None = None
    timestamp_max_age_s: int = TIMESTAMP_MAX_AGE_S
    limits: ServingLimits = field(default_factory=ServingLimits)  # read deadlines, connections

    def __post_init__(self) -> None:
        if self.operator_token is None and not self.insecure:
            raise FleetError(
                "The fleet server needs an operator token (set the variable named by "
                "--operator-token-env); only a developer's test fleet may run without one "
                "(--insecure-dev)."
            )


def _parse_range(value: bytes | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) from a `bytes=N-[M]` header; None for no/unsupported range.

    Raises RangeNotSatisfiable for a range past the end or an inverted one (`bytes=9-3`).
    """
    if value is None or not value.startswith(b"bytes="):
        return None
    spec = value[6:].decode("latin-1").strip()
    if "," in spec or "-" not in spec:
        return None
    first, _, last = spec.partition("-")
    if not first.isdigit() or not (last.isdigit() or not last):
        return None
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable
    return start, min(end, size - 1)


class FleetServer:
    """The ASGI application and its background tasks (controller, batched writes)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metadata_dir = (config.repo / "metadata").resolve()
        self.targets_dir = (config.repo / "targets").resolve()
        ModelRepository(config.repo, config.keys_dir)  # fail early when it is not a repository
        self.store = FleetStore(config.db_url)
        self.devices = DeviceRegistry(
            self.store, config.max_devices, config.enrol_rate, config.enrol_burst
        )
        self.lease = ControllerLease(self.store.engine)
        self.publisher = (
            Publisher(
                config.repo,
                [open_sink(m, config.mirror_endpoint_url) for m in config.mirrors],
                config.timestamp_max_age_s,
            )
            if config.mirrors
            else None
        )
        self.operator = OperatorToken(config.operator_token) if config.operator_token else None
        self.report_limit = RateLimiter(config.report_rate, config.report_burst)
        self.enrol_per_address = RateLimiter(
            config.enrol_rate_per_address, 5 * config.enrol_rate_per_address
        )
        self._pending: list[tuple[DeviceReport, str | None, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._write_lag_s = 0.0
        self._meta_cache: dict[str, tuple[int, bytes]] = {}
        self.view = ControllerView()
        self.counts: Counter[str] = Counter()
        self.metrics = FleetMetrics()
        self._releases: tuple[tuple[str, int], list[ModelRelease]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.routes = self._routes()

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await asgi.dispatch(self.routes, scope, receive, send, self.metrics.request)
        elif scope["type"] == "lifespan":
            await asgi.lifespan(receive, send, self._startup, self._shutdown)

    def _routes(self) -> asgi.Routes:
        routes = asgi.Routes()
        routes.add("/tuf/metadata/*", self._metadata, GET, "tuf_metadata")
        routes.add("/tuf/targets/*", self._target, GET, "tuf_targets")
        routes.add("/v1/devices/report", self._report, POST, "report")
        routes.add("/v1/devices/enrol", self._enrol, POST, "enrol")
        routes.add("/v1/fleet/enrolment-tokens", self._issue_token, POST, "enrolment_token")
        routes.add("/v1/fleet/status", self._status, frozenset({"GET"}), "status")
        routes.add("/healthz", self._health, None, "health")
        routes.add("/readyz", self._health, None, "health")
        routes.add("/metrics", self._metrics, frozenset({"GET"}), "metrics")
        return routes

    async def _startup(self) -> None:
        self._tasks.append(asyncio.create_task(self._flush_loop()))
        if self.config.controller:
            self._tasks.append(asyncio.create_task(self._control_loop()))

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.flush()
        except Exception as exc:  # their agents were told (503) and send them again
            log_event(log, "db.flush_failed", error=str(exc))
        await asyncio.to_thread(self.lease.release)
        self.store.close()

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"status": "ok"})

    async def _status(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._operator(scope)
        await send_json(send, 200, await self.status())

    # -- repository files ------------------------------------------------------------------

    def _safe(self, base: Path, rel: str) -> Path:
        p = (base / rel).resolve()
        if base not in p.parents or not p.is_file():
            raise NotFound(f"{rel} is not in the repository.")
        return p

    async def _metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path"][len("/tuf/metadata/") :]
        self.counts["metadata"] += 1
        try:
            st = os.stat(self.metadata_dir / name)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise NotFound(f"{name} is not in the repository.") from None
        cached = self._meta_cache.get(name)
        if cached is None or cached[0] != st.st_mtime_ns:
            data = self._safe(self.metadata_dir, name).read_bytes()
            cached = (st.st_mtime_ns, data)
            self._meta_cache[name] = cached
        await send_bytes(send, 200, cached[1])

    async def _target(self, scope: Scope, receive: Receive, send: Send) -> int:
        rel = scope["path"][len("/tuf/targets/") :]
        self.counts["targets"] += 1
        path = self._safe(self.targets_dir, rel)
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        headers = [(b"content-type", b"application/octet-stream"), (b"accept-ranges", b"bytes")]
        try:
            rng = _parse_range(header(scope, b"range"), size)
        except RangeNotSatisfiable:
            headers.append((b"content-range", f"bytes */{size}".encode()))
            await send_bytes(send, 416, b"", headers)
            return 416
        if rng is not None:
            start, end = rng
            status = 206
            headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
            self.counts["range"] += 1
        headers.append((b"content-length", str(end - start + 1).encode()))
        stream = await StreamedReply.start(send, status, headers)
        if scope["method"] == "HEAD":
            await stream.end()
            return status
        rate = self.config.rate_limit_bps
        t0 = time.monotonic()
        sent = 0
        chunk_size = CHUNK if rate is None else max(1024, min(CHUNK, int(rate / 10)))
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = await asyncio.to_thread(f.read, min(chunk_size, left))
                if not chunk:
                    break
                left -= len(chunk)
                sent += len(chunk)
                await stream.chunk(chunk, more=left > 0)
                if rate is not None:
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        return status

    # -- device API ------------------------------------------------------------------------

    def _operator(self, scope: Scope) -> None:
        if self.operator is None:  # --insecure-dev
            return
        if not self.operator.matches(bearer(header(scope, b"authorization"))):
            raise Unauthorized("A valid operator token is required (Bearer).", code="invalid_token")

    async def _json_body(self, scope: Scope, receive: Receive, code: str) -> dict[str, Any]:
        body = await read_body(receive, REPORT_LIMIT, scope)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise BadRequest("The body must be a JSON object.", status=422, code=code)
        return data

    async def _issue_token(self, scope: Scope, receive: Receive, send: Send) -> int:
        self._operator(scope)
        data = await self._json_body(scope, receive, "invalid_request")
        device_id = data.get("device_id")
        uses, ttl_s = data.get("uses", 1), data.get("ttl_s", 86400)
        if device_id is not None and (
            not isinstance(device_id, str) or not 0 < len(device_id) <= 128
        ):
            raise BadRequest("device_id must be a string of 1..128 characters.", status=422)
        if not isinstance(uses, int) or not isinstance(ttl_s, (int, float)):
            raise BadRequest("uses must be an integer and ttl_s a number.", status=422)
        try:
            token = await asyncio.to_thread(self.devices.issue_token, device_id, uses, float(ttl_s))
        except CredentialError as exc:
            raise _refusal(exc) from None
        log_event(log, "enrolment.token_issued", device=device_id, uses=uses, ttl_s=ttl_s)
        await send_json(
            send, 201, {"token": token, "device_id": device_id, "uses": uses, "ttl_s": ttl_s}
        )
        return 201

    async def _enrol(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Order matters: the per-address limit first (cheap, in memory, per process), then the
        # token (one indexed read, constant-time compare), and only a valid token is charged
        # to the fleet-wide limit, so anonymous garbage cannot use it up for real devices.
        now = time.monotonic()
        wait = self.enrol_per_address.take(_client_address(scope), now)
        if wait:
            raise RateLimited("Too many enrolment attempts from this address.", wait)
        token = bearer(header(scope, b"authorization"))
        if token is None:
            raise Unauthorized("An enrolment token is required (Bearer).", code="invalid_token")
        data = await self._json_body(scope, receive, "invalid_request")
        device_id = data.get("device_id")
        if not isinstance(device_id, str) or not 0 < len(device_id) <= 128:
            raise BadRequest("device_id must be a string of 1..128 characters.", status=422)
        try:  # the token first, then the fleet-wide limit (in the database: every process)
            credential = await asyncio.to_thread(self.devices.enrol, token, device_id)
        except EnrolmentLimited as exc:
            raise RateLimited(str(exc), exc.retry_after_s) from None
        except CredentialError as exc:
            raise _refusal(exc) from None
        log_event(log, "device.enrolled", device=device_id)
        await send_json(send, 200, {"device_id": device_id, "credential": credential})

    async def _report(self, scope: Scope, receive: Receive, send: Send) -> int:
        self.counts["reports"] += 1
        given: str | None = None
        if not self.config.insecure:
            given = bearer(header(scope, b"authorization"))
            parts = split_token(given, DEVICE_PREFIX) if given else None
            if parts is None:
                raise _no_credential()
            # keyed by the credential's id: garbage under a made-up id cannot use up a real
            # device's allowance (the credential itself is checked with its group, below)
            wait = self.report_limit.take(parts[0], time.monotonic())
            if wait:
                raise RateLimited("Too many reports from this device.", wait)
        body = await read_body(receive, REPORT_LIMIT, scope)
        try:
            report = DeviceReport.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise BadRequest(
                f"Invalid report at {loc}: {first['msg']}", status=422, code="invalid_report"
            ) from None
        report.received_at = time.time()
        report.events_seen = 0  # the server's to set
        self.metrics.reports.inc()
        try:
            await self._store_report(report, given)
        except APIError:  # its credential was refused
            raise
        except Exception as exc:  # the agent keeps its events and sends them again later
            self.metrics.flush_errors.inc()
            log_event(log, "db.write_failed", error=type(exc).__name__)
            raise Unavailable(
                "The fleet database is unavailable; the report was not stored. Retry later.",
                headers={"retry-after": "5"},
            ) from None
        hint = next_poll_hint(
            self.config.poll_interval_s, self._write_lag_s, self.config.shed_write_lag_s
        )
        headers = [] if hint is None else [(NEXT_POLL_HEADER.encode(), f"{hint:.0f}".encode())]
        await send_bytes(send, 204, b"", headers)
        return 204

    async def _store_report(self, report: DeviceReport, credential: str | None) -> None:
        """Queue the report for the next group write and wait until it is stored: a 204 means
        the database has it, so a server killed at any moment loses no acknowledged report.
        The group's credentials are checked against the database in one read first."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((report, credential, done))
        self._wake.set()
        await done

    async def flush(self) -> None:
        """Check and write every queued report (one credential read, one transaction) and
        answer their waiters."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        t0 = time.monotonic()
        try:
            stored, refused = await asyncio.to_thread(self._write_group, batch)
            # how long a report waited for the database, smoothed: the load-shedding signal
            self._write_lag_s = 0.8 * self._write_lag_s + 0.2 * (time.monotonic() - t0)
        except Exception as exc:
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            raise
        for i, (_, _, done) in enumerate(batch):
            if not done.done():
                if i in refused:
                    done.set_exception(refused[i])
                else:
                    done.set_result(None)
        for report in stored:
            if report.events:
                self.metrics.device_events((ev.kind, ev.reason) for ev in report.events)
            for ev in report.events:
                log_event(
                    log, "device.event",
                    device=report.device_id,
                    kind=ev.kind,
                    version=ev.version,
                    reason=ev.reason,
                )

    def _write_group(
        self, batch: list[tuple[DeviceReport, str | None, asyncio.Future[None]]]
    ) -> tuple[list[DeviceReport], dict[int, APIError]]:
        """(blocking) The reports whose credential holds, stored; the refusals by position."""
        refused: dict[int, APIError] = {}
        ok = [r for r, _, _ in batch]
        if not self.config.insecure:
            devices = self.devices.devices_of([c for _, c, _ in batch])
            ok = []
            for i, ((report, _, _), device) in enumerate(zip(batch, devices, strict=True)):
                if device is None:
                    refused[i] = _no_credential()
                elif device != report.device_id:
                    refused[i] = Forbidden(
                        f"This credential belongs to {device}, not {report.device_id}.",
                        code="device_mismatch",
                    )
                else:
                    ok.append(report)
        return self.store.save(ok), refused

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # a moment for more reports to join this group: one transaction for all of them
            await asyncio.sleep(self.config.flush_s)
            try:
                await self.flush()
            except Exception as exc:  # the waiters were told; the next group tries again
                log_event(log, "db.flush_failed", error=str(exc))

    async def _control_loop(self) -> None:
        while True:
            try:
                if await asyncio.to_thread(self.lease.held):
                    done = await asyncio.to_thread(
                        control_once,
                        self.config.repo,
                        self.config.keys_dir,
                        self.store,
                        self.view,
                    )
                    for step in done.steps:
                        self.metrics.rollout_step(step["model"], step["action"])
                    await self._after_control(done)
            except Exception as exc:
                self.metrics.controller_errors.inc()
                log_event(log, "controller.failed", error=str(exc))
            await asyncio.sleep(self.config.tick_s)

    async def _after_control(self, done: ControlPass) -> None:
        """Publish to the mirrors when the signed metadata changed: a controller step or
        re-sign here, or a `release` command since the last pass (a new timestamp)."""
        if self.publisher is None or not (done.resigned or self.publisher.changed()):
            return
        try:
            written = await asyncio.to_thread(self.publisher.publish)
        except Exception as exc:  # the next pass tries again; devices keep the last good one
            self.metrics.controller_errors.inc()
            log_event(log, "mirror.publish_failed", error=str(exc)[:300])
            return
        log_event(log, "mirror.published", files=written)

    # -- metrics ---------------------------------------------------------------------------

    def _current_releases(self) -> list[ModelRelease]:
        """Releases in the newest targets metadata; re-read only when a new version is signed."""
        newest: tuple[int, str] | None = None
        for name in os.listdir(self.metadata_dir):
            head, _, rest = name.partition(".")
            if rest == "targets.json" and head.isdigit():
                newest = max(newest or (0, ""), (int(head), name))
        if newest is None:
            return []
        key = (newest[1], os.stat(self.metadata_dir / newest[1]).st_mtime_ns)
        if self._releases is None or self._releases[0] != key:
            repo = ModelRepository(self.config.repo, self.config.keys_dir, env={})
            self._releases = (key, repo.releases())
        return self._releases[1]

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._operator(scope)
        releases = await asyncio.to_thread(self._current_releases)
        devices = await asyncio.to_thread(self.store.devices_by_version)
        snapshot = FleetSnapshot(
            devices=devices,
            releases=releases,
            gates=dict(self.view.gates),
            controller_last_tick=self.view.last_tick,
            pending_writes=len(self._pending),
        )
        body = self.metrics.render(snapshot)
        headers = [(b"content-type", prometheus_client.CONTENT_TYPE_LATEST.encode())]
        await send_bytes(send, 200, body, headers)

    async def status(self) -> dict[str, Any]:
        """The fleet at a glance, the same from every process: releases with the rollout
        state and gate values the controller stored, devices (the first STATUS_DEVICES by
        id), recent events."""
        return await asyncio.to_thread(self._status_now)

    def _status_now(self) -> dict[str, Any]:
        repo = ModelRepository(self.config.repo, self.config.keys_dir, env={})
        stored = self.store.rollouts()
        releases = []
        for r in repo.releases():
            row = stored.get((r.model, r.version))
            releases.append(
                {
                    "model": r.model,
                    "version": r.version,
                    "stage": r.rollout.stage,
                    "percent": r.rollout.percent,
                    "reason": r.rollout.reason,
                    "gates": row.gates if row is not None else None,
                }
            )
        now = time.time()
        devices = [
            {
                "device_id": r.device_id,
                "model": r.model,
                "version": r.version,
                "status": r.status,
                "metrics": r.metrics.model_dump(),
                "failed_versions": r.failed_versions,
                "seen_s_ago": round(now - r.received_at, 1),
            }
            for r in self.store.reports(limit=STATUS_DEVICES)
        ]
        return {
            "releases": releases,
            "devices": devices,
            "devices_total": self.store.device_count(),
            "events": self.store.recent_events(50),
            "requests": dict(self.counts),
        }


def _no_credential() -> Unauthorized:
    return Unauthorized(
        "A valid device credential is required (Bearer); enrol the device first.",
        code="invalid_token",
    )


def _client_address(scope: Scope) -> str:
    """The peer address of a request (the proxy's, behind one: limit there too)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def _refusal(exc: CredentialError) -> APIError:
    """The API error a refused token or enrolment answers with."""
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
    err = APIError(str(exc), code=exc.code, status=exc.status)
    err.type = kind.get(exc.status, "invalid_request_error")
    return err


def check_listen(host: str, tls: bool, allow_plain_http: bool) -> None:
    """Refuse to serve device credentials in clear to the network (FleetError)."""
    if not tls and not allow_plain_http and not is_loopback(host):
        raise FleetError(
            f"--host {host} is reachable from the network: give --tls-cert and --tls-key so "
            "devices talk https, or --allow-plain-http behind a TLS-terminating proxy."
        )


def serve(
    config: ServerConfig,
    host: str,
    port: int,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    allow_plain_http: bool = False,
) -> None:
    """Run the fleet server until SIGINT/SIGTERM (https when given a certificate and key)."""
    from edgecloud.api.serving import serve_forever

    if (tls_cert is None) != (tls_key is None):
        raise FleetError("give both --tls-cert and --tls-key, or neither")
    check_listen(host, tls_cert is not None, allow_plain_http)
    app = FleetServer(config)
    log_event(
        log, "fleet.serve",
        host=host,
        port=port,
        https=tls_cert is not None,
        insecure_dev=config.insecure,
        repo=str(config.repo),
        db=masked_url(config.db_url),
    )
    serve_forever(
        app,
        host,
        port,
        limits=config.limits,
        drain_timeout_s=5,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
    )
