"""A lean HTTP/1.1 keep-alive client for the load generator: asyncio protocols + httptools.

Why not aiohttp here: on a 2-core edge box the measuring tool must stay out of the way, and a
general-purpose client spends most of its CPU on machinery a benchmark does not need (a
coroutine and header objects per request). Here a request is one `transport.write` of bytes
built once, the response is parsed by httptools' C parser through callbacks, and the stream
is scanned in place. Preflight and cold start still use aiohttp (a few requests).

TLS works (the transport does it); proxies and redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

from edgecloud.bench.results import RequestRecord
from edgecloud.bench.sse import StreamScanner, chunk_text

Done = Callable[[RequestRecord], None]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class _Exchange:
    """One request in flight: its record, clock origin, and what the response taught us."""

    __slots__ = (
        "rec",
        "origin",
        "done",
        "status",
        "sse",
        "scan",
        "chunks",
        "timer",
        "finished",
        "text_sink",
    )

    def __init__(
        self, rec: RequestRecord, origin: float, done: Done, text_sink: dict[int, str] | None = None
    ) -> None:
        self.rec = rec
        self.origin = origin
        self.done = done
        self.status = 0
        self.sse = False
        self.scan: StreamScanner | None = None
        self.chunks: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None
        self.finished = False
        self.text_sink = text_sink  # id(record) -> generated text, for a tokenizer to count

    def finish(self, error: str | None, end: float) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        rec = self.rec
        if error is None:
            error = self._complete(end)
        if error is not None:
            rec.ok = False
            rec.error = error
        self.done(rec)

    def _complete(self, end: float) -> str | None:
        rec = self.rec
        if self.status != 200:
            return f"http_{self.status}"
        if self.scan is not None:
            scan = self.scan
            if scan.bad or scan.events == 0:
                return "not_openai"
            if scan.error is not None:
                return "stream_error"
            if not scan.done and scan.usage is None:
                return "stream_incomplete"
            times = scan.token_times
            if times:
                rec.ttft_ms = _ms(times[0] - self.origin)
                rec.itl_ms = [_ms(b - a) for a, b in zip(times, times[1:], strict=False)]
            rec.e2e_ms = _ms(end - self.origin)
            _apply_usage(rec, scan.usage, len(times))
            if self.text_sink is not None and scan.usage is None and scan.texts is not None:
                self.text_sink[id(rec)] = "".join(scan.texts)
            return None
        try:
            obj = orjson.loads(b"".join(self.chunks))
        except orjson.JSONDecodeError:
            return "not_openai"
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return "not_openai"
        rec.e2e_ms = _ms(end - self.origin)
        usage = obj.get("usage")
        _apply_usage(rec, usage if isinstance(usage, dict) else None, len(obj["choices"]))
        if self.text_sink is not None and not isinstance(usage, dict):
            self.text_sink[id(rec)] = chunk_text(b"".join(self.chunks))
        return None


def _apply_usage(rec: RequestRecord, usage: dict[str, Any] | None, chunks: int) -> None:
    if usage is not None and isinstance(usage.get("completion_tokens"), int):
        rec.output_tokens = usage["completion_tokens"]
        prompt = usage.get("prompt_tokens")
        rec.prompt_tokens = prompt if isinstance(prompt, int) else 0
        rec.token_source = "server_usage"
    else:
        rec.output_tokens = chunks
        rec.token_source = "chunks"


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: Any = None  # asyncio.Transport (uvloop's does not subclass it)
        self.parser = httptools.HttpResponseParser(self)
        self.ex: _Exchange | None = None
        self.closed = False
        self._ctype = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("not_openai")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.ex is not None:
            self._fail("disconnect")

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.ex is not None and name.lower() == b"content-type":
            self.ex.sse = b"text/event-stream" in value

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.status = self.parser.get_status_code()
            if ex.sse and ex.status == 200:
                ex.scan = StreamScanner(collect_text=ex.text_sink is not None)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is None:
            return
        if ex.scan is not None:
            ex.scan.feed(body, time.perf_counter())
        elif ex.status == 200:
            ex.chunks.append(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        self.ex = None
        keep = self.parser.should_keep_alive()
        if ex is not None:
            ex.finish(None, time.perf_counter())
        if keep and not self.closed:
            self.pool.release(self)
        else:
            self.close()

    # ours
    def send(self, data: bytes, ex: _Exchange, timeout_s: float) -> None:
        self.ex = ex
        ex.timer = self.pool.loop.call_later(timeout_s, self._timeout, ex)
        assert self.transport is not None
        self.transport.write(data)

    def _timeout(self, ex: _Exchange) -> None:
        if self.ex is ex:
            self._fail("timeout")

    def _fail(self, kind: str) -> None:
        ex = self.ex
        self.ex = None
        self.close()
        if ex is not None:
            ex.finish(kind, time.perf_counter())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class ConnectionPool:
    """Keep-alive connections to one origin; `limit` 0 opens as many as needed."""

    def __init__(self, url: str, limit: int = 0, connect_timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.limit = limit
        self.connect_timeout_s = connect_timeout_s
        self.loop = asyncio.get_running_loop()
        self.idle: deque[_Connection] = deque()
        self.open: set[_Connection] = set()
        self._ssl = ssl.create_default_context() if self.tls else None
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    def take_idle(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        return None

    async def acquire(self) -> _Connection:
        """An idle connection, a new one, or (at the limit) the next one released."""
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn
            if not self.limit or len(self.open) < self.limit:
                return await self._connect()
            fut: asyncio.Future[_Connection | None] = self.loop.create_future()
            self._waiters.append(fut)
            got = await fut
            if got is not None:
                return got

    async def _connect(self) -> _Connection:
        conn = _Connection(self)
        self.open.add(conn)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                ),
                self.connect_timeout_s,
            )
        except BaseException:
            self.open.discard(conn)
            raise
        return conn

    def release(self, conn: _Connection) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self.open.discard(conn)
        while self._waiters:  # a slot freed up: a waiter may open a fresh connection
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close(self) -> None:
        for conn in list(self.open):
            conn.close()
        self.idle.clear()
