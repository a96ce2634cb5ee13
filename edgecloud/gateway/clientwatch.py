"""Noticing a client that leaves while the gateway waits on a silent upstream.

The gateway's server protocol (cork.CorkedHttpToolsProtocol) puts a ClientWatch into each
request's scope and calls `client_left()` from its `connection_lost`, so no task per request
waits on `receive()`. The forwarder hands the watch the deadline (deadline.Deadline) of the
upstream wait it is in; the disconnect moves that deadline to now, which ends the wait at once
with TimeoutError, and `gone` tells that apart from a real timeout. Under another ASGI server the
scope has no watch: `follow()` then makes one fed by a task that waits on `receive()`.
"""

from __future__ import annotations

import asyncio

from edgecloud.api.asgi import Receive, Scope
from edgecloud.gateway.deadline import Deadline

SCOPE_KEY = "edgecloud.client_watch"


class ClientWatch:
    """Whether the client is gone, and the upstream deadline to cut short when it goes."""

    __slots__ = ("gone", "guard", "task")

    def __init__(self) -> None:
        self.gone = False
        self.guard: Deadline | None = None
        self.task: asyncio.Task[None] | None = None

    def client_left(self) -> None:
        """The client's connection closed: end the upstream wait now (see the module doc)."""
        if self.gone:
            return
        self.gone = True
        guard = self.guard
        if guard is not None and not guard.expired():
            try:
                guard.reschedule(0.0)  # in the past: fires on the loop's next turn
            except RuntimeError:  # the guarded block is already exiting
                pass

    def stop(self) -> None:
        """The request is over: cancel the fallback task, if any."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()


def follow(scope: Scope, receive: Receive) -> ClientWatch:
    """The scope's watch, or one fed by a task on `receive()` (servers without the hook).

    Call only once the request body has been read: the next `receive()` then completes only
    when the client disconnects."""
    watch = scope.get(SCOPE_KEY)
    if watch is not None:
        return watch  # type: ignore[no-any-return]
    watch = ClientWatch()

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        watch.client_left()

    watch.task = asyncio.ensure_future(wait())
    return watch
