"""Fewer send() calls per response: uvicorn writes the status line and headers, then the body,
as two socket writes. This transport wrapper holds the header block back until the next write
(the body, joined into one `writelines`) or the end of the loop iteration, so a small answer
leaves in one segment, as nginx sends it. Body writes (stream chunks) pass straight through.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from edgecloud.api.guard import GuardedHttpToolsProtocol
from edgecloud.gateway.clientwatch import SCOPE_KEY, ClientWatch


class CorkedTransport:
    """Delegates to the real transport, buffering writes until the loop's next turn."""

    __slots__ = ("_transport", "_loop", "_pending", "_scheduled")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if data[:5] == b"HTTP/":  # uvicorn's status line and headers: hold them back
            self._pending.append(data)
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self.flush)
            return
        if self._pending:
            self._pending.append(data)
            self.flush()
        elif data:
            self._transport.write(data)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(GuardedHttpToolsProtocol):
    """Our guarded httptools protocol over a CorkedTransport, telling requests when their
    client leaves (a ClientWatch in the scope; see clientwatch.py)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Requests whose answer is not complete yet, oldest first (more than one only when the
        # client pipelines).
        self._watches: deque[ClientWatch] = deque()
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        scope = self.scope
        if scope is not None and "path" in scope:  # not an upgrade
            watch = ClientWatch()
            scope[SCOPE_KEY] = watch  # type: ignore[literal-required]  # our server's own key
            self._watches.append(watch)

    def on_response_complete(self) -> None:
        if self._watches:
            self._watches.popleft()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        watches = self._watches
        while watches:
            watches.popleft().client_left()
