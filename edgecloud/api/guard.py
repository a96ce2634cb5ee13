"""Read deadlines and a connection limit for our HTTP servers (node, gateway, fleet server).

Without a deadline on *reading* a request, a client that sends half a header block, or
announces a body and stalls, holds its connection and a file descriptor for ever, and a
thousand such clients exhaust the open-files limit so that every normal request fails. Our
server protocol (`edgecloud.api.protocol.HttpProtocol`) reports each connection's phases to a
`ConnectionGuard`, which adds:

- a header deadline: from a connection's start, or a request's first byte, until its header
  block is complete (408, then closed);
- a body deadline: from the end of the headers until the whole body is in (408 if no answer
  started, then closed; the app sees a disconnect);
- a connection limit below the descriptor limit: when it is reached, the connection that has
  waited longest for its headers is closed to make room (a stalled client, most likely), else
  the new one is refused. Either way one structured log line says so (at most every 10 s).

Deadlines are checked by one sweep timer, not a timer per request: a request only stores a
timestamp when it changes phase, which keeps the gateway's hot path as it was. The same sweep
closes keep-alive connections idle for `keep_alive_s` (a timer armed and cancelled per response
would cost about 2 µs a request on uvloop).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from http import HTTPStatus
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from edgecloud.api.errors import APIError
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


class Guarded(Protocol):
    """A connection as the guard sees it (api/protocol.HttpProtocol)."""

    loop: asyncio.AbstractEventLoop

    def read_timed_out(self, message: str) -> None: ...

    def make_room(self) -> None: ...

    def keep_alive_ended(self) -> None: ...


class ConnectionGuard:
    """Deadlines and the connection limit, shared by every connection of one server."""

    def __init__(self, limits: ServingLimits, max_connections: int) -> None:
        self.header_timeout_s = limits.header_timeout_s
        self.body_timeout_s = limits.body_timeout_s
        self.max_connections = max_connections
        self.open = 0
        # Insertion order is start order: the oldest entry is first, so a sweep stops early.
        self.headers: dict[Guarded, float] = {}
        self.bodies: dict[Guarded, float] = {}
        # Keep-alive connections between requests, since their last answer ended.
        self.idle: dict[Guarded, float] = {}
        self.keep_alive_s = limits.keep_alive_s  # uvicorn's timeout_keep_alive
        self._sweeper: asyncio.TimerHandle | None = None
        self._interval = min(1.0, max(0.05, min(self.header_timeout_s, self.body_timeout_s,
                                                limits.keep_alive_s) / 4))
        self._evicted = 0
        self._refused = 0
        self._last_limit_log = float("-inf")

    # -- connection events --------------------------------------------------------------------
    def admit(self, conn: Guarded, now: float) -> bool:
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

    def closed(self, conn: Guarded) -> None:
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


def _expired(started: dict[Guarded, float], before: float
             ) -> list[Guarded]:
    out = []
    for conn, since in started.items():
        if since > before:
            break
        out.append(conn)
    return out


def raw_error(err: APIError) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection (written past the app)."""
    body = err.body()
    head = [b"HTTP/1.1 %d %s\r\n" % (err.status, HTTPStatus(err.status).phrase.encode()),
            b"content-type: application/json\r\nconnection: close\r\n"]
    head += [b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in err.headers.items()]
    head.append(b"content-length: %d\r\n\r\n" % len(body))
    return b"".join(head) + body
