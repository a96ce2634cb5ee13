"""The load generator's HTTP side: pre-encoded requests on lean keep-alive connections.

Each request ends in a `RequestRecord`; nothing raises for a bad answer, the record says what
went wrong (`error` kind). Times are `time.perf_counter()` seconds. `make_session` gives an
httpx client for the few non-load requests (preflight, cold start).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from edgecloud.bench.results import RequestRecord
from edgecloud.bench.timing_sink import Done, Exchange
from edgecloud.http1 import Connection, H1Pool


@dataclass(frozen=True)
class Target:
    """Where requests go: `base_url` ends at the API root (`.../v1`)."""

    base_url: str
    model: str
    api_key: str | None = None
    route: str = "chat"  # chat | completions
    stream: bool = True
    timeout_s: float = 120.0

    @property
    def url(self) -> str:
        path = "/chat/completions" if self.route == "chat" else "/completions"
        return self.base_url.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.stream:
            h["Accept"] = "text/event-stream"
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


def make_session(limit: int, timeout_s: float) -> httpx.AsyncClient:
    """An httpx client with keep-alive for the few requests outside the load (preflight, cold
    start); `limit` 0 means as many connections as needed."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        limits=httpx.Limits(max_connections=limit or None),
        headers={"User-Agent": "edgecloud-bench", "Accept-Encoding": "identity"},
    )


class RequestSender:
    """Sends requests and times them; `t0` is the run's zero (perf_counter seconds).

    `send` awaits one request (closed loop); `submit` sends at once on an idle connection and
    calls back when done (open loop: no task per request, the send leaves on schedule).
    """

    def __init__(
        self, target: Target, t0: float, limit: int = 0, collect_text: bool = False
    ) -> None:
        self.target = target
        # With a tokenizer and a server that gives no usage: id(record) -> generated text.
        self.texts: dict[int, str] | None = {} if collect_text else None
        self.t0 = t0
        self.pool = H1Pool(target.url, connect_timeout_s=min(10.0, target.timeout_s), limit=limit)
        self.loop = asyncio.get_running_loop()
        parts = urlsplit(target.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {host}",
            "User-Agent: edgecloud-bench",
            "Content-Type: application/json",
            "Accept-Encoding: identity",
        ]
        lines += [
            f"{k}: {v}"
            for k, v in target.headers().items()
            if k not in ("Content-Type", "Accept-Encoding")
        ]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        # Keyed by the body itself: bytes cache their hash and compare by identity first.
        self._wire: dict[bytes, bytes] = {}
        self._tasks: set[asyncio.Task[RequestRecord]] = set()

    def _bytes(self, body: bytes) -> bytes:
        wire = self._wire.get(body)
        if wire is None:
            wire = self._head + str(len(body)).encode() + b"\r\n\r\n" + body
            self._wire[body] = wire
        return wire

    def _record(self, level: float, scheduled: float | None, sent: float) -> RequestRecord:
        return RequestRecord(
            level=level,
            scheduled_s=None if scheduled is None else round(scheduled - self.t0, 6),
            start_s=round(sent - self.t0, 6),
        )

    def _write(
        self, conn: Connection, body: bytes, level: float, scheduled: float | None, done: Done
    ) -> None:
        wire = self._bytes(body)
        sent = time.perf_counter()
        origin = sent if scheduled is None or scheduled > sent else scheduled
        ex = Exchange(self._record(level, scheduled, sent), origin, done, self.texts)
        ex.send(conn, wire, self.target.timeout_s, self.loop)

    async def send(
        self,
        body: bytes,
        level: float,
        scheduled: float | None = None,
    ) -> RequestRecord:
        """Send one request (on a pooled connection) and wait for its record."""
        loop = asyncio.get_running_loop()
        try:
            conn = await self.pool.acquire()
        except (TimeoutError, OSError) as exc:
            return self._connect_failed(exc, level, scheduled)
        fut: asyncio.Future[RequestRecord] = loop.create_future()

        def done(rec: RequestRecord) -> None:
            if not fut.done():  # the waiter may be gone (Ctrl-C cancelled it)
                fut.set_result(rec)

        self._write(conn, body, level, scheduled, done)
        return await fut

    def submit(self, body: bytes, level: float, scheduled: float, done: Done) -> None:
        """Send now if a connection is idle (else as soon as one is open); `done` gets it."""
        conn = self.pool.take_idle()
        if conn is not None:
            self._write(conn, body, level, scheduled, done)
            return
        task = asyncio.ensure_future(self.send(body, level, scheduled))
        self._tasks.add(task)
        task.add_done_callback(self._task_done(done))

    def _task_done(self, done: Done) -> Callable[[asyncio.Task[RequestRecord]], None]:
        def callback(task: asyncio.Task[RequestRecord]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is None:
                done(task.result())

        return callback

    def _connect_failed(
        self, exc: BaseException, level: float, scheduled: float | None
    ) -> RequestRecord:
        rec = self._record(level, scheduled, time.perf_counter())
        rec.ok = False
        if isinstance(exc, asyncio.TimeoutError):
            rec.error = "timeout"
        elif isinstance(exc, ssl.SSLError):
            rec.error = "tls"
        else:
            rec.error = "connect"
        return rec

    def close(self) -> None:
        """Drop every connection (in-flight requests end as "disconnect")."""
        for task in list(self._tasks):
            task.cancel()
        self.pool.close()
