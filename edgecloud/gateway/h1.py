"""The gateway's HTTP/1.1 client for upstream calls: asyncio protocols + httptools, pooled.

Why not aiohttp here: py-spy showed aiohttp's client taking about 30% of the gateway's CPU on
small requests (a request object, a payload object, header multidicts, a writer and a stream
reader per call). Here a request is the pool's prebuilt header block plus the body, written in
one `writelines`; the response is parsed by httptools' C parser through callbacks; a streamed
body is handed over chunk by chunk as it arrives, with read back-pressure.

TLS is the transport's (`loop.create_connection(ssl=...)`). Not done: proxies, redirects (a 3xx
is relayed as it is), HTTP/2. A request that fails on a reused keep-alive connection before any
byte of the answer came back (the server had just closed it) is retried once on a new one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httptools


class UpstreamError(OSError):
    """The upstream could not be reached, or broke off or garbled its answer."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time."""

    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool
        self.transport: Any = None  # asyncio.Transport (uvloop's does not subclass it)
        self.parser = httptools.HttpResponseParser(self)
        self.resp: H1Response | None = None
        self.closed = False
        self.used = False  # has carried an exchange before (a stale keep-alive candidate)
        self._paused = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None or resp.complete:  # bytes nobody asked for: do not trust the connection
            self.close()
            return
        resp.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"unreadable HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        resp = self.resp
        if resp is not None and not resp.complete:
            if resp.status and not resp.length_known:
                resp.finish()  # a body delimited by the connection's end (no length, no chunks)
            else:
                resp.fail(UpstreamError("the upstream closed the connection mid-answer"))
        self.resp = None

    def pause_writing(self) -> None:  # large request bodies: nothing to do, the write is queued
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.resp
        if resp is not None and not resp.complete:
            resp.raw_headers.append((name, value))
            if len(name) in (14, 17):  # content-length, transfer-encoding: not close-delimited
                n = name.lower()
                if n == b"content-length" or (
                    n == b"transfer-encoding" and b"chunked" in value.lower()
                ):
                    resp.length_known = True

    def on_headers_complete(self) -> None:
        resp = self.resp
        if resp is None:
            return
        if resp.complete:  # a second answer in the same read: a broken server, do not reuse
            resp.keep_alive = False
            return
        status = self.parser.get_status_code()
        if status < 200:  # 1xx interim answers: wait for the real one
            resp.raw_headers.clear()
            resp.length_known = False
            return
        resp.status = status
        if not resp.headers_ready.done():
            resp.headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is not None and not resp.complete:
            resp.feed(body)
            if resp.buffered > self.pool.high_water and not self._paused:
                self._paused = True
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None or not resp.status or resp.complete:
            return  # the end of a 1xx interim answer (or of an answer nobody asked for)
        resp.keep_alive = self.parser.should_keep_alive()
        resp.finish()

    # -- used by the response -----------------------------------------------------------------
    def drained(self) -> None:
        """The consumer took what was buffered: read again."""
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def done(self, reusable: bool) -> None:
        """The exchange is over: back to the pool, or closed."""
        self.resp = None
        if reusable and not self.closed and not self._paused:
            self.used = True
            self.pool.put_back(self)
        else:
            self.close()

    def _fail(self, exc: BaseException) -> None:
        resp = self.resp
        self.close()
        if resp is not None:
            resp.fail(exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class H1Response:
    """An answer whose status and headers have arrived; the body follows."""

    __slots__ = ("conn", "status", "raw_headers", "headers_ready", "length_known", "keep_alive",
                 "complete", "error", "buffered", "got_bytes", "_chunks", "_waiter", "_released")

    def __init__(self, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_ready: asyncio.Future[None] = loop.create_future()
        self.length_known = False
        self.keep_alive = False
        self.complete = False
        self.error: BaseException | None = None
        self.buffered = 0
        self.got_bytes = False
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    # -- fed by the connection --------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def finish(self) -> None:
        self.complete = True
        if not self.headers_ready.done():  # closed before a status line: nothing usable
            self.fail(UpstreamError("the upstream closed the connection without answering"))
            return
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = exc
        if not self.headers_ready.done():
            self.headers_ready.set_exception(exc)
            self.headers_ready.exception()  # retrieved here; the caller re-raises it
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- read by the forwarder ----------------------------------------------------------------
    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        while not self.complete and self.error is None:
            await self._wait()
            if self.buffered > self.conn.pool.high_water:
                self.conn.drained()  # a large answer being read whole: keep it coming
        if self.error is not None:
            self.close()
            raise self.error
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.buffered = 0
        self.release()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive, joined when several came in one loop turn."""
        chunks = self._chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                self.conn.drained()
                yield data
                continue
            if self.error is not None:
                raise self.error
            if self.complete:
                self.release()
                return
            await self._wait()

    def release(self) -> None:
        """Done with this answer: the connection is reused if the answer ended cleanly."""
        if not self._released:
            self._released = True
            self.conn.done(self.complete and self.error is None and self.keep_alive)

    def close(self) -> None:
        """Drop the connection (a stream cut short or the client gone)."""
        if not self._released:
            self._released = True
            self.conn.done(False)


def client_ssl_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class H1Pool:
    """Keep-alive connections to one origin (scheme, host, port); no limit on their number."""

    high_water = 1 << 20  # bytes buffered from a stream before reading pauses

    def __init__(self, origin_url: str, headers: dict[str, str], *, connect_timeout_s: float,
                 verify_tls: bool = True, ssl_context: ssl.SSLContext | None = None,
                 check_peer: Callable[[asyncio.BaseTransport], None] | None = None) -> None:
        u = urlsplit(origin_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {origin_url}")
        self.tls = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host_header = self.host if ":" not in self.host else f"[{self.host}]"
        if not default_port:
            host_header += f":{self.port}"
        lines = [f"host: {host_header}", *(f"{k}: {v}" for k, v in headers.items())]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._ssl = (ssl_context or client_ssl_context(verify_tls)) if self.tls else None
        # Runs on each new connection after its handshake; raising refuses it (key pinning).
        self.check_peer = check_peer
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    # -- connections ------------------------------------------------------------------------
    def put_back(self, conn: _Connection) -> None:
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            raise UpstreamError(f"connect to {self.host}:{self.port} timed out") from None
        if self.check_peer is not None:
            try:
                self.check_peer(conn.transport)
            except BaseException:
                conn.close()
                raise
        self._all.add(conn)
        return conn

    async def _take(self) -> _Connection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return await self._connect()

    # -- requests ---------------------------------------------------------------------------
    async def request(self, method: bytes, target: bytes,
                      body: bytes | Sequence[bytes | memoryview] | None = None,
                      headers: dict[str, str] | None = None) -> H1Response:
        """Send one request; returns when the answer's status and headers are in.

        `body` may come in pieces (a spliced body), written in order without joining."""
        head = [method, b" ", target, b" HTTP/1.1\r\n", self._head]
        if headers:
            head.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"))
        parts: Sequence[bytes | memoryview] = (
            () if body is None else (body,) if isinstance(body, bytes) else body
        )
        if body is not None:
            head.append(b"content-length: %d\r\n\r\n" % sum(len(p) for p in parts))
        else:
            head.append(b"\r\n")
        data = b"".join(head)
        for _ in range(2):
            conn = await self._take()
            reused = conn.used
            resp = H1Response(conn, asyncio.get_running_loop())
            conn.resp = resp
            if parts:
                conn.transport.writelines((data, *parts))
            else:
                conn.transport.write(data)
            try:
                await resp.headers_ready
            except UpstreamError:
                if reused and not resp.got_bytes:
                    continue  # the server had closed this idle connection: one retry, fresh
                raise
            except BaseException:  # cancelled or timed out: the connection is mid-exchange
                conn.close()
                raise
            return resp
        raise UpstreamError("the upstream closed two connections without answering")

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
