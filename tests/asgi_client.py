"""Run an ASGI app in this process for fast tests: its lifespan, then an httpx client on it.

For tests of routing, errors and small routes where a real server process adds nothing; the
tests of wire behaviour (deadlines, streaming, disconnects) keep starting real processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx


@asynccontextmanager
async def in_process(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Start `app` (lifespan startup), yield a client on it, shut it down at the end."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        done = await outbox.get()
        assert done["type"] == "lifespan.shutdown.complete", done
        await task
