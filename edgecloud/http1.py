"""The one HTTP/1.1 client core: pooled keep-alive connections on asyncio protocols + httptools.

Used where a general-purpose client costs too much: the gateway's upstream calls (py-spy showed
aiohttp's client taking about 30% of the gateway's CPU on small requests) and the bench's load
generator (the measuring tool must stay out of the way). A request is bytes built once, written
in one `write`/`writelines`; the answer is parsed by httptools' C parser through callbacks and
handed to a `ResponseSink`:

- `StreamedResponse` (here): awaitable head, then the body read whole or chunk by chunk as it
  arrives, with read back-pressure. The gateway relays answers with it (`H1Pool.request`).
- the bench's timing recorder (`edgecloud.bench.h1`), all callbacks: no coroutine per request.

The skeleton both share: connect (TLS by the transport; `check_peer` runs on each new connection
after its handshake, the place for certificate pinning), idle connections reused newest first,
an optional limit with waiters, 1xx interim answers skipped, close-delimited bodies, bytes
nobody asked for (the connection is dropped), and one retry on a fresh connection when a reused
keep-alive connection fails before any byte of the answer came back (the server had just
closed it). Not done: proxies, redirects (a 3xx is an answer like any other), HTTP/2.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import httptools

from edgecloud.http1_errors import ConnectionDropped, ProtocolError, UpstreamError

__all__ = ["Body", "Connection", "ConnectionDropped", "H1Pool", "PeerCheck", "ProtocolError",
           "ResponseSink", "StreamedResponse", "UpstreamError", "client_ssl_context"]

Body = bytes | Sequence[bytes | memoryview]
# Bodies up to this size are joined with the head: copying a few KiB costs less than writev.
_JOIN_BELOW = 16 << 10


class ResponseSink(Protocol):
    """Receives one answer from a `Connection`. Every call happens on the event loop."""

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The final status and headers are in (1xx interim answers are skipped)."""

    def on_body(self, data: bytes) -> None:
        """A piece of the body, as it arrived."""

    def on_complete(self, keep_alive: bool) -> None:
        """The answer is complete; the sink now calls `Connection.release` when done with it."""

    def on_error(self, exc: UpstreamError) -> None:
        """The exchange failed; the connection is already closed."""


class Connection:
    """One keep-alive connection carrying one exchange at a time: its asyncio protocol, and
    httptools' parser's callbacks."""

    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool
        self.transport: Any = None  # asyncio.Transport (uvloop's does not subclass it)
        self.parser = httptools.HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.closed = False
        self.used = False  # has carried an exchange before (a stale keep-alive candidate)
        self.got_bytes = False
        self.ended = True  # no exchange in progress
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.length_known = False
        # (response, request bytes): set by `H1Pool.request` on a reused connection.
        self.retry: tuple[StreamedResponse, bytes, Sequence[bytes | memoryview]] | None = None
        self._paused = False

    # -- the exchange -------------------------------------------------------------------------
    def start(self, sink: ResponseSink, data: bytes, parts: Sequence[bytes | memoryview] = ()
              ) -> None:
        """Send one request (`data`, then `parts` in order) whose answer goes to `sink`."""
        self.sink = sink
        self.ended = False
        self.got_bytes = False
        self.status = 0
        self.headers = []
        self.length_known = False
        if parts:
            self.transport.writelines((data, *parts))
        else:
            self.transport.write(data)

    def release(self, reusable: bool) -> None:
        """The exchange is over: back to the pool if `reusable`, else closed."""
        self.sink = None
        self.retry = None
        if reusable and self.ended and not self.closed and not self._paused:
            self.used = True
            self.pool.release(self)
        else:
            self.close()

    def fail(self, exc: UpstreamError) -> None:
        """End the exchange with `exc` (a timeout, say) and drop the connection."""
        sink = self.sink
        ended = self.ended
        self.ended = True
        self.sink = None
        self.close()
        if sink is not None and not ended:
            sink.on_error(exc)

    def pause_reading(self) -> None:
        """The sink holds too much: stop reading until `resume_reading`."""
        if not self._paused and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.ended:  # bytes nobody asked for: do not trust the connection
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(ProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self.fail(ProtocolError(f"unreadable HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.ended:
            return
        retry = self.retry
        if retry is not None and not self.got_bytes:
            self.ended = True
            self.sink = None
            self.pool.retry(*retry)  # a reused connection the server had just closed: again
        elif self.status and not self.length_known:
            self.on_message_complete()  # a body delimited by the connection's end
        elif self.status:
            self.fail(ConnectionDropped("the server closed the connection mid-answer"))
        else:
            self.fail(ConnectionDropped("the server closed the connection without answering"))

    # -- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.ended:  # a second answer in one read: a broken server, do not reuse
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(name) in (14, 17):  # content-length, transfer-encoding: not close-delimited
            n = name.lower()
            if n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in
                                          value.lower()):
                self.length_known = True

    def on_headers_complete(self) -> None:
        if self.ended:
            return
        status = self.parser.get_status_code()
        if status < 200:  # 1xx interim answers: wait for the real one
            self.headers = []
            self.length_known = False
            return
        self.status = status
        self.retry = None
        if self.sink is not None:
            self.sink.on_head(status, self.headers)

    def on_body(self, body: bytes) -> None:
        if not self.ended and self.sink is not None:
            self.sink.on_body(body)

    def on_message_complete(self) -> None:
        if self.ended or not self.status:
            return  # the end of a 1xx interim answer
        self.ended = True
        keep = not self.closed and self.parser.should_keep_alive()
        if self.sink is not None:
            self.sink.on_complete(keep)


class StreamedResponse:
    """An answer whose status and headers have arrived (`head` resolved); the body follows."""

    def __init__(self, loop: asyncio.AbstractEventLoop, high_water: int = 1 << 20) -> None:
        self.conn: Connection | None = None
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = loop.create_future()
        self.keep_alive = False
        self.complete = False
        self.error: BaseException | None = None
        self.buffered = 0
        self.high_water = high_water  # bytes buffered from a stream before reading pauses
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    # -- ResponseSink ---------------------------------------------------------------------------
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.raw_headers = headers
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        if self.buffered > self.high_water and self.conn is not None:
            self.conn.pause_reading()
        self._wake()

    def on_complete(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.complete = True
        self._wake()

    def on_error(self, exc: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = exc
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved here; the caller re-raises it
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

    def _drained(self) -> None:
        self.buffered = 0
        if self.conn is not None:
            self.conn.resume_reading()

    # -- read by the consumer -------------------------------------------------------------------
    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        while not self.complete and self.error is None:
            await self._wait()
            if self.buffered > self.high_water and self.conn is not None:
                self.conn.resume_reading()  # a large answer being read whole: keep it coming
        if self.error is not None:
            self.close()
            raise self.error
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.buffered = 0
        self.release()
        return data

    def iter_any(self) -> BodyChunks:
        """Body bytes as they arrive, joined when several came in one loop turn."""
        return BodyChunks(self)

    def release(self) -> None:
        """Done with this answer: the connection is reused if the answer ended cleanly."""
        if not self._released:
            self._released = True
            if self.conn is not None:
                self.conn.release(self.complete and self.error is None and self.keep_alive)

    def close(self) -> None:
        """Drop the connection (a stream cut short, or the client gone)."""
        if not self._released:
            self._released = True
            if self.conn is not None:
                self.conn.release(False)


class BodyChunks:
    """`StreamedResponse.iter_any`: an async iterator (a class: mypyc compiles no async
    generators). After the last chunk the connection goes back to the pool; an error the
    answer ended with is raised once its chunks have been taken."""

    def __init__(self, resp: StreamedResponse) -> None:
        self.resp = resp

    def __aiter__(self) -> BodyChunks:
        return self

    async def __anext__(self) -> bytes:
        resp = self.resp
        chunks = resp._chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                resp._drained()
                return data
            if resp.error is not None:
                raise resp.error
            if resp.complete:
                resp.release()
                raise StopAsyncIteration
            await resp._wait()


def client_ssl_context(verify: bool = True) -> ssl.SSLContext:
    """The default client context; `verify=False` accepts any certificate (tests, labs)."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


PeerCheck = Callable[[asyncio.BaseTransport], None]
"""Called on each new connection after its TLS handshake; raising refuses the connection (the
hook for public-key pinning: `transport.get_extra_info("ssl_object").getpeercert(True)`)."""


class H1Pool:
    """Keep-alive connections to one origin (scheme, host, port); `limit` 0: no limit."""

    high_water = 1 << 20  # bytes buffered from a stream before reading pauses

    def __init__(self, origin_url: str, headers: dict[str, str] | None = None, *,
                 connect_timeout_s: float, verify_tls: bool = True, limit: int = 0,
                 ssl_context: ssl.SSLContext | None = None,
                 check_peer: PeerCheck | None = None) -> None:
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
        self.host_header = host_header
        lines = [f"host: {host_header}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._ssl = (ssl_context or client_ssl_context(verify_tls)) if self.tls else None
        self.check_peer = check_peer
        self.connect_timeout_s = connect_timeout_s
        self.limit = limit
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._retries: set[asyncio.Task[None]] = set()

    # -- connections ----------------------------------------------------------------------------
    def take_idle(self) -> Connection | None:
        """The most recently used idle connection, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return None

    async def acquire(self) -> Connection:
        """An idle connection, a new one, or (at the limit) the next one released."""
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn
            if not self.limit or len(self._all) < self.limit:
                return await self._connect()
            fut: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            got = await fut
            if got is not None:
                return got

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(self)
        self._all.add(conn)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(  # (a protocol by its methods, not its base)
                    lambda: conn,  # type: ignore[type-var,return-value]
                    self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                )
            if self.check_peer is not None:
                self.check_peer(conn.transport)
        except TimeoutError:
            conn.close()
            self.forget(conn)
            raise UpstreamError(f"connect to {self.host}:{self.port} timed out") from None
        except BaseException:
            conn.close()
            self.forget(conn)
            raise
        return conn

    def release(self, conn: Connection) -> None:
        """A connection free for the next exchange: to a waiter, else idle."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)

    def forget(self, conn: Connection) -> None:
        """A connection closed."""
        if conn in self._all:
            self._all.discard(conn)
            try:
                self._idle.remove(conn)
            except ValueError:
                pass
        while self._waiters:  # a place freed up: a waiter may open a fresh connection
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    # -- requests -------------------------------------------------------------------------------
    def encode(self, method: bytes, target: bytes, body: Body | None = None,
               headers: dict[str, str] | None = None) -> tuple[bytes, Sequence[bytes | memoryview]]:
        """The request's head (with the pool's headers) and its body pieces."""
        head = [method, b" ", target, b" HTTP/1.1\r\n", self._head]
        if headers:
            head.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"))
        parts: Sequence[bytes | memoryview] = (
            () if body is None else (body,) if isinstance(body, bytes) else body
        )
        if body is None:
            head.append(b"\r\n")
            return b"".join(head), parts
        size = sum(len(p) for p in parts)
        head.append(b"content-length: %d\r\n\r\n" % size)
        if size <= _JOIN_BELOW:  # one buffer, one plain write: cheaper than a writev of pieces
            return b"".join((*head, *parts)), ()
        return b"".join(head), parts

    async def request(self, method: bytes, target: bytes, body: Body | None = None,
                      headers: dict[str, str] | None = None) -> StreamedResponse:
        """Send one request; returns when the answer's status and headers are in.

        `body` may come in pieces (a spliced body), written in order without joining."""
        data, parts = self.encode(method, target, body, headers)
        resp = StreamedResponse(asyncio.get_running_loop(), self.high_water)
        conn = await self.acquire()
        resp.conn = conn
        if conn.used:
            conn.retry = (resp, data, parts)
        conn.start(resp, data, parts)
        try:
            await resp.head
        except BaseException:
            # Failed, cancelled or timed out: the connection is mid-exchange, drop it.
            resp.close()
            raise
        return resp

    def retry(self, resp: StreamedResponse, data: bytes,
              parts: Sequence[bytes | memoryview]) -> None:
        """Send a request again on a fresh connection (its reused one had gone stale)."""
        task = asyncio.get_running_loop().create_task(self._fresh(resp, data, parts))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _fresh(self, resp: StreamedResponse, data: bytes,
                     parts: Sequence[bytes | memoryview]) -> None:
        try:
            conn = await self._connect()
        except (TimeoutError, OSError) as exc:
            resp.on_error(exc if isinstance(exc, UpstreamError) else UpstreamError(str(exc)))
            return
        if resp._released or resp.head.done():  # the caller gave up meanwhile
            conn.release(True)
            return
        resp.conn = conn
        conn.start(resp, data, parts)

    def close(self) -> None:
        for task in list(self._retries):
            task.cancel()
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
