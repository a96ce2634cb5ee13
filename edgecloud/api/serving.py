"""Run an ASGI app on uvicorn's server (uvloop, our httptools protocol) and exit 0 after a
clean drain.

Every server of ours (node, gateway, fleet server) starts here, so each gets the same HTTP/1.1
protocol (`edgecloud.api.protocol`), read deadlines and connection limit (`edgecloud.api.guard`)
and the same open-files limit.
uvicorn re-raises the SIGINT/SIGTERM it caught once it has shut down, which turns a clean drain
into "killed by signal"; `serve_forever` keeps uvicorn's drain and exits normally instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from edgecloud.api.guard import (
    ConnectionGuard,
    ServingLimits,
    default_max_connections,
    raise_open_files_limit,
)
from edgecloud.api.protocol import HttpProtocol
from edgecloud.logs import log_event

log = logging.getLogger("edgecloud.serving")


class _CleanExitServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config,
                 on_drain: Callable[[float], None] | None = None) -> None:
        super().__init__(config)
        self.on_drain = on_drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The drain starts: the app hears of it now, not only once every connection has closed
        # (its lifespan shutdown), so it can end what is still running before the deadline.
        if self.on_drain is not None:
            self.on_drain(float(self.config.timeout_graceful_shutdown or 0))
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # The signal did its job (a graceful shutdown): do not re-raise it afterwards.
            self._captured_signals.clear()


def serve_forever(
    app: Any,
    host: str,
    port: int,
    *,
    limits: ServingLimits | None = None,
    drain_timeout_s: float = 30.0,
    on_drain: Callable[[float], None] | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    backlog: int = 2048,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, let in-flight requests finish (up to the drain timeout).

    `on_drain(timeout_s)` is called in the event loop when the drain begins. `sockets`: listen
    on these, already bound (one worker of several sharing a port), instead of host:port."""
    limits = limits or ServingLimits()
    open_files = raise_open_files_limit()
    max_connections = limits.max_connections or default_max_connections(open_files)
    guard = ConnectionGuard(limits, max_connections)
    log_event(log, "serving", host=host, port=port, max_connections=max_connections,
              open_files=open_files, header_timeout_s=limits.header_timeout_s,
              body_timeout_s=limits.body_timeout_s)
    config = uvicorn.Config(
        app, host=host, port=port, backlog=backlog, ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile, loop="uvloop", lifespan="on",
        http=functools.partial(HttpProtocol, guard=guard),  # type: ignore[arg-type]
        timeout_graceful_shutdown=math.ceil(drain_timeout_s),  # int(0.5) would be no drain
        timeout_keep_alive=math.ceil(limits.keep_alive_s),  # the guard's sweep enforces it
        # No access log, Server or Date header, proxy headers: the apps log what they need.
        access_log=False, log_level="warning", server_header=False, date_header=False,
        proxy_headers=False,
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    _CleanExitServer(config, on_drain).run(sockets=sockets)
