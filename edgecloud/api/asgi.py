"""The ASGI edge every server shares (node, gateway, fleet server): the lifespan loop, a route
table with one error mapping, bounded body reading, JSON and SSE responses.

They sit on uvicorn (uvloop + httptools) without a framework: on a 2-core edge box a router and
middleware stack cost more than the work the gateway does per request. A route here is one dict
lookup (or a prefix scan for the few prefix routes) and one await.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from edgecloud.api.errors import APIError, MethodNotAllowed, NotFound, PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


Handler = Callable[[Scope, Receive, Send], Awaitable[int | None]]
"""Answers one request; returns the status it sent (None: 200), for metrics."""

GET = frozenset({"GET", "HEAD"})
POST = frozenset({"POST"})


class ClientDisconnected(Exception):
    """The client went away while we were reading its request."""


async def lifespan(receive: Receive, send: Send, startup: Callable[[], Awaitable[None]],
                   shutdown: Callable[[], Awaitable[None]]) -> None:
    """The ASGI lifespan protocol: `startup` before the first request, `shutdown` after the
    last; a startup that raises fails the server's start with its message."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


@dataclass(frozen=True, slots=True)
class Route:
    """A path's handler, the methods it takes (None: any) and its name in metrics."""

    name: str
    handler: Handler
    methods: frozenset[str] | None = GET


class Routes:
    """Exact paths (a dict lookup) and path prefixes (scanned in order, for `/x/{rest}`)."""

    def __init__(self) -> None:
        self.exact: dict[str, Route] = {}
        self.prefixes: list[tuple[str, Route]] = []

    def add(self, path: str, handler: Handler, methods: frozenset[str] | None = GET,
            name: str | None = None) -> None:
        """Route `path` (a prefix when it ends in `/*`) to `handler`."""
        if path.endswith("/*"):
            self.prefixes.append((path[:-1], Route(name or path, handler, methods)))
        else:
            self.exact[path] = Route(name or path, handler, methods)

    def match(self, method: str, path: str) -> Route:
        """The route for a request; NotFound or MethodNotAllowed (both OpenAI errors)."""
        route = self.exact.get(path)
        if route is None:
            for prefix, candidate in self.prefixes:
                if path.startswith(prefix):
                    route = candidate
                    break
            else:
                raise NotFound(f"No route {method} {path}.")
        if route.methods is not None and method not in route.methods:
            allowed = " or ".join(sorted(route.methods - {"HEAD"}))
            raise MethodNotAllowed(f"Use {allowed} for {path}.")
        return route


async def dispatch(routes: Routes, scope: Scope, receive: Receive, send: Send,
                   observe: Callable[[str, int], None] | None = None) -> None:
    """Answer one request through `routes`: an APIError becomes the OpenAI error envelope, a
    client gone while we read becomes 499; `observe(route name, status)` runs after each."""
    name, status = "other", 500
    try:
        route = routes.match(scope["method"], scope["path"])
        name = route.name
        status = await route.handler(scope, receive, send) or 200
    except APIError as err:
        status = err.status
        await send_error(send, err)
    except ClientDisconnected:
        status = 499  # nginx's code for a client that went away
    finally:
        if observe is not None:
            observe(name, status)


def header(scope: Scope, name: bytes) -> bytes | None:
    """First value of a request header (name in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(receive: Receive, limit: int, scope: Scope | None = None) -> bytes:
    """Read the whole request body, refusing (413) anything over `limit` bytes."""
    if scope is not None:
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Request body is {int(declared)} bytes; the limit is {limit}.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body is over the limit of {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = JSON_HEADERS,
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


class StreamedReply:
    """A reply sent in pieces: start() sends the status and headers, chunk() each piece of the
    body, end() the last one."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    @classmethod
    async def start(cls, send: Send, status: int,
                    headers: Iterable[tuple[bytes, bytes]]) -> StreamedReply:
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        return cls(send)

    async def chunk(self, body: bytes, more: bool = True) -> None:
        """One piece of the body; `more=False` makes it the last."""
        await self._send({"type": "http.response.body", "body": body, "more_body": more})

    async def end(self, body: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(
    send: Send, status: int, obj: Any, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_bytes(send, status, orjson.dumps(obj), [*JSON_HEADERS, *extra])


async def send_error(send: Send, err: APIError, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    headers = [*JSON_HEADERS, *extra]
    headers.extend((k.encode(), v.encode()) for k, v in err.headers.items())
    await send_bytes(send, err.status, err.body(), headers)


def sse_event(obj: Any) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
