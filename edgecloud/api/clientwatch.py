"""Noticing a client that leaves while a request waits on something silent (an upstream).

Our server protocol (api/protocol.py) puts the request's ClientWatch into its scope and calls
`client_left()` from its `connection_lost`, so no task per request waits on `receive()`. The
gateway's forwarder hands the watch the deadline (gateway/deadline.Deadline, or an
asyncio.Timeout) of the upstream wait it is in; the disconnect moves that deadline to now, which
ends the wait at once with TimeoutError, and `gone` tells that apart from a real timeout. Under
another ASGI server the scope has no watch: `follow()` then makes one fed by a task that waits on
`receive()`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from edgecloud.api.asgi import Receive, Scope

SCOPE_KEY = "edgecloud.client_watch"


class Reschedulable(Protocol):
    """A deadline that can be moved (asyncio.Timeout, gateway.deadline.Deadline)."""

    def expired(self) -> bool: ...

    def reschedule(self, when: float) -> None: ...


class ClientWatch:
    """Whether the client is gone, and the deadline to cut short when it goes."""

    __slots__ = ("gone", "guard", "task")

    def __init__(self) -> None:
        self.gone = False
        self.guard: Reschedulable | None = None
        self.task: asyncio.Task[None] | None = None

    def client_left(self) -> None:
        """The client's connection closed: end the guarded wait now (see the module doc)."""
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
