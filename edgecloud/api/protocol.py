"""Our HTTP/1.1 server protocol (httptools), run by uvicorn's server for every server of ours.

uvicorn keeps what it does well: sockets, signals, the lifespan and the graceful drain
(`Server.shutdown` calls each connection's `shutdown()` and waits on `server_state.tasks`). Each
connection speaks through `HttpProtocol` instead of uvicorn's `HttpToolsProtocol`, because on a
small request the server was a quarter of the gateway's CPU: uvicorn builds a
`RequestResponseCycle` and an `asyncio.Event` per request, checks every response header with two
regular expressions, parses every URL, and writes a response's head and body as two segments.
Here one `Request` object is the request's ASGI `receive`/`send`, its body buffer and its
`ClientWatch` (api/clientwatch.py); a future is made only when the app must wait for bytes;
the head is checked with one search over its bytes; a plain path skips the URL parser; and the
head leaves with the first piece of the body, in one write.

What the protocol does, as HTTP/1.1 asks (RFC 9112):
- keep-alive, `Connection: close`, HTTP/1.0 (closed after each answer, close-delimited when the
  app gives no length);
- pipelining: requests are answered in order; reading pauses while one waits its turn;
- `Expect: 100-continue`: `100 Continue` is sent when the app first asks for the body;
- answers with `content-length` (checked against what is sent) or chunked; HEAD sends no body;
- flow control both ways: reading pauses while 64 KiB of unread body is buffered, and `send`
  waits while the transport's write buffer is over its high-water mark;
- an upgrade request (WebSocket, h2c) is answered as a plain request, then the connection closes;
- a request the parser refuses gets a 400 (OpenAI-style error) and the connection closes
  (llhttp in strict mode: both Content-Length and Transfer-Encoding, two lengths, obs-fold,
  control bytes and bare LFs are refused, so no request can hide in another's body), and a
  request line and headers over 64 KiB get a 431;
- the read deadlines, idle keep-alive timeout and connection limit of `ConnectionGuard`
  (api/guard.py).
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import urllib.parse
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import httptools
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from edgecloud.api.asgi import Message
from edgecloud.api.clientwatch import SCOPE_KEY, ClientWatch
from edgecloud.api.errors import (
    APIError,
    BadRequest,
    HeadersTooLarge,
    RequestTimeout,
    TooManyConnections,
)
from edgecloud.api.guard import raw_error

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from edgecloud.api.guard import ConnectionGuard

_log = logging.getLogger("uvicorn.error")

BODY_HIGH_WATER = 65536  # unread request body buffered before reading pauses (uvicorn's)
MAX_HEAD_BYTES = 65536  # request line and headers (nginx allows 4 x 8 KiB lines, h11 16 KiB)
_JOIN_BELOW = 16384  # a body up to this leaves joined with its head; a larger one by writev


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES = {s: _status_line(s) for s in range(100, 600)}
# In a response head, only the CR LF we put there may be control bytes (and HTAB in a value).
_BAD_HEAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A field name is a token (RFC 9110 5.1); names are checked once and remembered.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_good_names: set[bytes] = set()
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})


def _checked_name(name: bytes) -> bytes:
    lower = name.lower()
    if lower not in _good_names:
        if _TOKEN.fullmatch(lower) is None:
            raise RuntimeError(f"Invalid HTTP header name {name!r}.")
        if len(_good_names) < 4096:  # names come from code, not from clients: a small set
            _good_names.add(lower)
    return lower


class _HeadTooLarge(Exception):
    """Raised in a parser callback: the request's head is over MAX_HEAD_BYTES."""


class Request(ClientWatch):
    """One request: its scope, its ASGI `receive` and `send`, its body buffer, and the state of
    its answer. It is also the request's ClientWatch (scope[SCOPE_KEY])."""

    __slots__ = ("conn", "scope", "url", "headers", "expect_continue", "keep_alive", "head_only",
                 "http10", "body", "buffered", "more_body", "delivered_last", "waiters",
                 "started", "complete", "held", "chunked", "remaining")

    def __init__(self, conn: HttpProtocol) -> None:
        super().__init__()
        self.conn = conn
        self.scope: dict[str, Any] = {}
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.keep_alive = True
        self.head_only = False
        self.http10 = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.more_body = True
        self.delivered_last = False
        # The app's receive() calls waiting for bytes or the end (one, or a watcher task too).
        self.waiters: list[asyncio.Future[None]] | None = None
        self.started = False
        self.complete = False
        self.held: bytes | None = None  # the response head, until the body's first piece
        self.chunked = False
        self.remaining = -1  # bytes the content-length still owes; -1: no content-length

    # -- the app's side -------------------------------------------------------------------------
    async def receive(self) -> Message:
        """The ASGI receive: the body as it arrives, then `http.disconnect` once the client is
        gone or the answer is complete."""
        if self.expect_continue:
            self.expect_continue = False
            transport = self.conn.transport
            if not self.started and not transport.is_closing():
                transport.write(_CONTINUE)
        while True:
            if self.gone or self.complete:
                return {"type": "http.disconnect"}
            if self.body or (not self.more_body and not self.delivered_last):
                body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body = []
                self.buffered = 0
                more = self.more_body
                self.delivered_last = not more
                if more:
                    self.conn.body_drained(self)
                return {"type": "http.request", "body": body, "more_body": more}
            self.conn.body_drained(self)
            waiter = self.conn.loop.create_future()
            if self.waiters is None:
                self.waiters = [waiter]
            else:
                self.waiters.append(waiter)
            try:
                await waiter
            finally:
                self._forget(waiter)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        # Its own method: `waiters` may have been emptied while receive() waited, which the
        # compiled receive() would not expect of an attribute it had just seen set.
        waiters = self.waiters
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)

    async def send(self, message: Message) -> None:
        """The ASGI send: `http.response.start`, then `http.response.body` pieces."""
        conn = self.conn
        if conn.write_paused and not self.gone:
            await conn.drain()
        if self.gone:
            return  # the client left: what the app still sends goes nowhere
        if not self.started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected 'http.response.start', got {message['type']!r}.")
            self._start(message["status"], message.get("headers", ()))
            self.started = True  # after the head is checked: a bad one still gets a 500
            self.expect_continue = False
            return
        if self.complete:
            raise RuntimeError(f"Unexpected {message['type']!r} after the response completed.")
        if message["type"] != "http.response.body":
            raise RuntimeError(f"Expected 'http.response.body', got {message['type']!r}.")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.head_only:
            body = b""
        elif self.chunked:
            if body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                body += b"0\r\n\r\n"
        elif self.remaining >= 0:
            self.remaining -= len(body)
            if self.remaining < 0:
                raise RuntimeError("Response content longer than Content-Length.")
        transport = conn.transport
        held = self.held
        if held is not None:
            self.held = None
            if not body:
                transport.write(held)
            elif len(body) <= _JOIN_BELOW:
                transport.write(held + body)
            else:
                transport.writelines((held, body))
        elif body:
            transport.write(body)
        if not more:
            if self.remaining > 0:
                raise RuntimeError("Response content shorter than Content-Length.")
            self.complete = True
            self._wake()
            if not self.keep_alive:
                transport.close()
            conn.response_done(self)

    def _start(self, status: int, headers: Any) -> None:
        line = _STATUS_LINES.get(status)
        if line is None:
            raise RuntimeError(f"Invalid HTTP status {status!r}.")
        parts = [line]
        n = 0
        close = False
        for name, value in (*self.conn.default_headers, *headers):
            name = _checked_name(name)
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise RuntimeError(f"Invalid content-length {value!r}.") from None
                if self.remaining < 0 and not self.chunked:
                    self.remaining = length
            elif name == b"transfer-encoding":
                if value.lower() == b"chunked":
                    self.chunked = True
                    self.remaining = -1
            elif name == b"connection" and b"close" in value.lower():
                close = True
            parts += (name, b": ", value, b"\r\n")
            n += 1
        if self.expect_continue and self.more_body:
            # Answered before asking for the body: the client may never send it, so the
            # connection cannot carry another request.
            self.keep_alive = False
        if close:
            self.keep_alive = False
        elif not self.keep_alive:
            parts.append(b"connection: close\r\n")
            n += 1
        if (self.remaining < 0 and not self.chunked and not self.head_only
                and status not in _NO_BODY_STATUS and status >= 200):
            if self.http10:  # no chunks in HTTP/1.0: the body ends where the connection does
                self.keep_alive = False
            else:
                parts.append(b"transfer-encoding: chunked\r\n")
                n += 1
                self.chunked = True
        if status in _NO_BODY_STATUS:
            self.head_only = True  # 204 and 304 carry no body, whatever the app sends
        if self.head_only:
            self.remaining = -1
            self.chunked = False
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Values may hold no control bytes: no CR or LF but ours, and none of the others.
        if (head.count(b"\n") != n + 2 or head.count(b"\r") != n + 2
                or _BAD_HEAD.search(head) is not None):
            raise RuntimeError("Invalid HTTP header value.")
        self.held = head  # it leaves with the body's first piece, in one write
        if self.remaining < 0 and not self.head_only:
            self.conn.loop.call_soon(self.flush)  # a stream: or at the end of this turn

    def flush(self) -> None:
        """Send the held response head now (a stream whose first piece is not ready)."""
        held = self.held
        if held is not None:
            self.held = None
            transport = self.conn.transport
            if not transport.is_closing():
                transport.write(held)

    # -- the connection's side ------------------------------------------------------------------
    def _wake(self) -> None:
        waiters = self.waiters
        if waiters:
            self.waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def left(self) -> None:
        """The connection closed before the answer was complete."""
        self.client_left()
        self._wake()


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection (see the module doc). Built by uvicorn's server, which passes
    `config`, `server_state`, `app_state`; `guard` is ours."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *,
                 guard: ConnectionGuard) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.root_path = config.root_path
        self.app_state = app_state
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.guard = guard
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        try:  # answer a request even when the client closes right after sending it
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # pragma: no cover - httptools < 0.6.3
            pass
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.current: Request | None = None  # the request being parsed
        self.active: Request | None = None  # the request being answered
        self.waiting: deque[Request] = deque()  # pipelined requests, in order
        self.read_paused = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._guarded = False
        self._done_reading = False  # after a parse error or an upgrade: bytes are ignored
        self._head_bytes = 0  # of the request being read: its line and headers so far

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        self.connections.add(self)  # type: ignore[arg-type]
        self.server = get_local_addr(t)
        self.client = get_remote_addr(t)
        self.scheme = "https" if is_ssl(t) else "http"
        self._guarded = True
        if not self.guard.admit(self, self.loop.time()):
            t.write(raw_error(TooManyConnections("The server is at its connection limit.")))
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)  # type: ignore[arg-type]
        if self._guarded:
            self._guarded = False
            self.guard.closed(self)
        for r in (self.active, *self.waiting, self.current):
            if r is not None and not r.complete:
                r.left()
        self.waiting.clear()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._done_reading = True

    def eof_received(self) -> bool | None:
        return None  # a half-close ends the connection (the transport closes it), as in uvicorn

    def data_received(self, data: bytes) -> None:
        if self._done_reading:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Answered as a plain request (no upgrade is served); what follows is another
            # protocol's bytes, so the connection closes after the answers owed.
            self._stop_reading()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):  # raised in our callback
                self._unreadable(HeadersTooLarge(
                    f"The request line and headers are over {MAX_HEAD_BYTES} bytes."))
            else:
                self._unreadable(BadRequest(f"Invalid HTTP request: {exc}."))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark."""
        if self._drain is None:
            self._drain = self.loop.create_future()
        await asyncio.shield(self._drain)

    # -- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        r = self.current = Request(self)
        self._head_bytes = 0
        guard = self.guard
        if self not in guard.headers:  # not the connection's first request
            guard.idle.pop(self, None)
            guard.headers[self] = self.loop.time()
        r.scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                   "http_version": "1.1", "server": self.server, "client": self.client,
                   "scheme": self.scheme, "root_path": self.root_path, "headers": r.headers,
                   SCOPE_KEY: r}
        if self.app_state:
            r.scope["state"] = self.app_state.copy()

    def on_url(self, url: bytes) -> None:
        r = self.current
        if r is not None:
            r.url += url
            self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.current
        if r is None:
            return
        self._count_head(len(name) + len(value))
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            r.expect_continue = True
        r.headers.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.current
        if r is None:
            return
        guard = self.guard
        guard.headers.pop(self, None)
        guard.bodies[self] = self.loop.time()
        parser = self.parser
        scope = r.scope
        method = scope["method"] = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
            r.http10 = version == "1.0"
        r.keep_alive = not r.http10 and parser.should_keep_alive()
        r.head_only = method == "HEAD"
        url = r.url
        try:
            if url[:1] == b"/" and b"?" not in url and b"%" not in url and b"#" not in url:
                raw_path, query = url, b""
                path = url.decode("ascii")
            else:
                # Any: httptools' stubs say bytes where the parser gives None, and compiled
                # code would check the stubs' word (edgecloud/compiled.py).
                parsed: Any = httptools.parse_url(url)
                raw_path, query = parsed.path or b"/", parsed.query or b""
                path = raw_path.decode("ascii")
                if "%" in path:
                    path = urllib.parse.unquote(path)
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            self._unreadable(BadRequest("Invalid request target."))
            return
        if self.root_path:
            scope["path"] = self.root_path + path
            scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        else:
            scope["path"] = path
            scope["raw_path"] = raw_path
        scope["query_string"] = query
        if self.active is None:
            self._begin(r)
        else:  # pipelined: answered once the ones before it are
            self.waiting.append(r)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        r = self.current
        if r is None or r.complete:
            return  # answered already (say, 413 before the body was read): dropped
        r.body.append(body)
        r.buffered += len(body)
        if r.buffered > BODY_HIGH_WATER:
            self._pause_reading()
        r._wake()

    def on_message_complete(self) -> None:
        r = self.current
        self.current = None
        self.guard.bodies.pop(self, None)
        if r is None or r.complete:
            return
        r.more_body = False
        r._wake()

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:  # the parser stops here (feed_data raises)
            raise _HeadTooLarge

    # -- requests and answers -----------------------------------------------------------------
    def _begin(self, r: Request) -> None:
        self.active = r
        task = self.loop.create_task(self._run(r))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _run(self, r: Request) -> None:
        try:
            await self.app(r.scope, r.receive, r.send)
        except BaseException as exc:  # noqa: BLE001 - answered (500) or closed, then re-raised?
            _log.error("Exception in ASGI application", exc_info=exc)
            self._failed(r)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            if not r.complete and not r.gone:
                _log.error("ASGI application returned without %s the response.",
                           "completing" if r.started else "starting")
                self._failed(r)

    def _failed(self, r: Request) -> None:
        """The app raised or returned without a whole answer: a 500 if nothing reached the wire
        yet, else the connection closes (the client sees a cut answer, never a wrong one)."""
        transport = self.transport
        if r.gone or r.complete or transport.is_closing():
            return
        if r.started and r.held is None:  # bytes of the answer are on the wire
            transport.close()
            return
        r.held = None  # a head not sent yet is replaced by the 500
        r.started = r.complete = True
        transport.write(raw_error(APIError("The server failed on this request.",
                                           code="internal_error")))
        transport.close()

    def response_done(self, r: Request) -> None:
        """`r`'s answer is complete: start the next pipelined request, or wait idle."""
        self.server_state.total_requests += 1
        if self.active is r:
            self.active = None
        if self.transport.is_closing():
            return
        if self.waiting:
            self._begin(self.waiting.popleft())
            if not self.waiting:
                self._resume_reading()
            return
        self._resume_reading()
        if self.current is None:
            self.guard.idle[self] = self.loop.time()

    def body_drained(self, r: Request) -> None:
        """The app took `r`'s buffered body: read on, unless a request waits its turn."""
        if self.read_paused and not self.waiting and not self._done_reading:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self._done_reading:
            self.read_paused = False
            self.transport.resume_reading()

    def _stop_reading(self) -> None:
        """No more requests on this connection: the ones owed are answered, then it closes."""
        self._done_reading = True
        self.guard.headers.pop(self, None)
        self.guard.bodies.pop(self, None)
        owed = self.waiting[-1] if self.waiting else self.active
        if owed is not None and not owed.complete:
            owed.keep_alive = False
            return
        if self.current is None and not self.transport.is_closing():
            self.transport.close()

    def _unreadable(self, err: APIError) -> None:
        """The bytes are not HTTP (or not a request we can route): a 400 for the request being
        read, unless an answer is under way, and the connection closes after what is owed."""
        r = self.current
        self.current = None
        self._done_reading = True
        self.guard.headers.pop(self, None)
        self.guard.bodies.pop(self, None)
        transport = self.transport
        if r is not None and r in self.waiting:  # its body broke: never started
            self.waiting.remove(r)
            r.left()
        elif r is not None and r is self.active and not r.complete:
            r.left()  # the app waiting for the body hears that the client is gone
            if not r.started:
                transport.write(raw_error(err))  # nothing sent yet: the 400 is its answer
            transport.close()
            return
        owed = self.waiting[-1] if self.waiting else self.active
        if owed is None or owed.complete:
            if not transport.is_closing():
                transport.write(raw_error(err))
                transport.close()
        else:
            owed.keep_alive = False

    # -- uvicorn's server and our guard -------------------------------------------------------
    def shutdown(self) -> None:
        """The server drains: close now if idle, else after the answer under way."""
        r = self.active
        if r is None or r.complete:
            self.transport.close()
        else:
            r.keep_alive = False
            self.waiting.clear()

    def keep_alive_ended(self) -> None:
        """Idle between requests for the keep-alive timeout: closed."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def read_timed_out(self, message: str) -> None:
        """A read deadline passed: answer 408 unless an answer is under way, and close."""
        self._close_with(RequestTimeout(message))

    def make_room(self) -> None:
        """Closed to make room for a new connection at the limit."""
        self._close_with(TooManyConnections("The server is at its connection limit."))

    def _close_with(self, err: APIError) -> None:
        guard = self.guard
        guard.headers.pop(self, None)
        guard.bodies.pop(self, None)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        r = self.active
        if r is None or not r.started:
            transport.write(raw_error(err))
        # The app waiting in receive() sees a disconnect; what it sends after is dropped.
        for pending in (self.active, *self.waiting, self.current):
            if pending is not None and not pending.complete:
                pending.left()
        transport.close()
