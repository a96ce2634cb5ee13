"""One request through an ASGI app in this process, for benchmarks that time the app itself
(no HTTP server in front): the body arrives at once, the client stays connected."""

from __future__ import annotations

import asyncio
from typing import Any


def post_scope(path: str) -> dict[str, Any]:
    """The scope of a JSON POST to `path`."""
    return {"type": "http", "method": "POST", "path": path,
            "headers": [(b"content-type", b"application/json")]}


async def asgi_status(app: Any, scope: dict[str, Any], body: bytes) -> int:
    """Send one request with `body` to `app` and return the status it answered."""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client stays
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status
