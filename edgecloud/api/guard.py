"""Read deadlines and a connection limit for our HTTP servers (node, gateway, fleet server).

uvicorn closes idle keep-alive connections but puts no deadline on *reading* a request: a
client that sends half a header block, or announces a body and stalls, holds its connection
and a file descriptor for ever, and a thousand such clients exhaust the open-files limit so
that every normal request fails. `GuardedHttpToolsProtocol` (uvicorn's httptools protocol
plus a `ConnectionGuard`) adds:

- a header deadline: from a connection's start, or a request's first byte, until its header
  block is complete (408, then closed);
- a body deadline: from the end of the headers until the whole body is in (408 if no answer
  started, then closed; the app sees a disconnect);
- a connection limit below the descriptor limit: when it is reached, the connection that has
  waited longest for its headers is closed to make room (a stalled client, most likely), else
  the new one is refused. Either way one structured log line says so (at most every 10 s).

Deadlines are checked by one sweep timer, not a timer per request: a request only stores a
timestamp when it changes phase, which keeps the gateway's hot path as it was. The same sweep
closes keep-alive connections idle for uvicorn's `timeout_keep_alive` (uvicorn arms and cancels
a timer per response for that: about 2 µs a request on uvloop).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edgecloud.api.errors import APIError, RequestTimeout, TooManyConnections
from edgecloud.logs import log_event

log = logging.getLogger("edgecloud.serving")

# Descriptors kept for everything but client connections: upstream connections (the gateway
# holds one per request in flight), model and database files, the log.
_RESERVED_FDS = 64
_LOG_EVERY_S = 10.0


class ServingLimits(BaseModel):
    """How long a client may take to send a request, and how many connections are served."""

    model_config = ConfigDict(extra="forbid")

    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds from a first byte to the end of the headers"
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds from the end of the headers to the end of the body"
    )
    max_connections: int | None = Field(
        default=None, ge=1, description="Open client connections; unset: half the open-files limit"
    )
    keep_alive_s: float = Field(
        default=30.0, gt=0, description="Seconds a keep-alive connection may idle between requests"
    )


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections(open_files: int) -> int:
    """Half the descriptors left after a reserve: the other half is for upstream connections."""
    return max(16, (open_files - _RESERVED_FDS) // 2)


class ConnectionGuard:
    """Deadlines and the connection limit, shared by every connection of one server."""

    def __init__(self, limits: ServingLimits, max_connections: int) -> None:
        self.header_timeout_s = limits.header_timeout_s
        self.body_timeout_s = limits.body_timeout_s
        self.max_connections = max_connections
        self.open = 0
        # Insertion order is start order: the oldest entry is first, so a sweep stops early.
        self.headers: dict[GuardedHttpToolsProtocol, float] = {}
        self.bodies: dict[GuardedHttpToolsProtocol, float] = {}
        # Keep-alive connections between requests, since their last answer ended.
        self.idle: dict[GuardedHttpToolsProtocol, float] = {}
        self.keep_alive_s = limits.keep_alive_s  # uvicorn's timeout_keep_alive
        self._sweeper: asyncio.TimerHandle | None = None
        self._interval = min(1.0, max(0.05, min(self.header_timeout_s, self.body_timeout_s,
                                                limits.keep_alive_s) / 4))
        self._evicted = 0
        self._refused = 0
        self._last_limit_log = float("-inf")

    # -- connection events --------------------------------------------------------------------
    def admit(self, conn: GuardedHttpToolsProtocol, now: float) -> bool:
        """A new connection: make room at the limit; False when it must be refused."""
        self.open += 1
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self._interval, self._sweep, conn.loop)
        if self.open > self.max_connections:
            victim = next(iter(self.headers), None)
            if victim is None:
                self._refused += 1
                self._limit_reached(now)
                return False
            self._evicted += 1
            self._limit_reached(now)
            victim.make_room()
        self.headers[conn] = now
        return True

    def closed(self, conn: GuardedHttpToolsProtocol) -> None:
        self.open -= 1
        self.headers.pop(conn, None)
        self.bodies.pop(conn, None)
        self.idle.pop(conn, None)

    def _limit_reached(self, now: float) -> None:
        if now - self._last_limit_log >= _LOG_EVERY_S:
            self._last_limit_log = now
            log_event(log, "connection_limit_reached", logging.WARNING,
                      limit=self.max_connections, open=self.open,
                      closed_stalled=self._evicted, refused=self._refused)
            self._evicted = self._refused = 0

    # -- deadlines ------------------------------------------------------------------------------
    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        late_headers = _expired(self.headers, now - self.header_timeout_s)
        late_bodies = _expired(self.bodies, now - self.body_timeout_s)
        for conn in late_headers:
            conn.read_timed_out(f"The request headers did not arrive within "
                                f"{self.header_timeout_s:g} s.")
        for conn in late_bodies:
            conn.read_timed_out(f"The request body did not arrive within "
                                f"{self.body_timeout_s:g} s.")
        for conn in _expired(self.idle, now - self.keep_alive_s):
            self.idle.pop(conn, None)
            conn.keep_alive_ended()
        if late_headers or late_bodies:
            log_event(log, "read_deadline", logging.INFO,
                      header_timeouts=len(late_headers), body_timeouts=len(late_bodies))
        self._sweeper = (loop.call_later(self._interval, self._sweep, loop)
                         if self.open > 0 else None)


def _expired(started: dict[GuardedHttpToolsProtocol, float], before: float
             ) -> list[GuardedHttpToolsProtocol]:
    out = []
    for conn, since in started.items():
        if since > before:
            break
        out.append(conn)
    return out


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and the connection limit."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self._guarded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._guarded = True
        if not self.guard.admit(self, self.loop.time()):
            self._refuse()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._guarded:
            self._guarded = False
            self.guard.closed(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        guard = self.guard
        if self not in guard.headers:  # not the connection's first request
            guard.idle.pop(self, None)
            guard.headers[self] = self.loop.time()

    def on_headers_complete(self) -> None:
        guard = self.guard
        guard.headers.pop(self, None)
        guard.bodies[self] = self.loop.time()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.guard.bodies.pop(self, None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, but the keep-alive idle deadline is the guard's sweep, not a timer per
        # response (see the module doc).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.guard.idle[self] = self.loop.time()

    # -- ours ---------------------------------------------------------------------------------
    def keep_alive_ended(self) -> None:
        """Idle between requests for the keep-alive timeout: closed, as uvicorn does."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def read_timed_out(self, message: str) -> None:
        """A read deadline passed: answer 408 unless an answer started, and close."""
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
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            transport.write(_raw_error(err))
        if cycle is not None and not cycle.response_complete:
            # The app waiting in receive() sees a disconnect; its own answer is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        transport.close()

    def _refuse(self) -> None:
        self.transport.write(_raw_error(TooManyConnections("The server is at its connection "
                                                           "limit.")))
        self.transport.close()


def _raw_error(err: APIError) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection (written past the app)."""
    body = err.body()
    head = [b"HTTP/1.1 %d %s\r\n" % (err.status, HTTPStatus(err.status).phrase.encode()),
            b"content-type: application/json\r\nconnection: close\r\n"]
    head += [b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in err.headers.items()]
    head.append(b"content-length: %d\r\n\r\n" % len(body))
    return b"".join(head) + body
