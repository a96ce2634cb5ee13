"""The one way to start a streamed ASGI reply: headers, then pieces, then the last piece."""

from __future__ import annotations

import asyncio
from typing import Any

from edgecloud.api.asgi import StreamedReply


def test_a_streamed_reply_sends_headers_then_pieces_then_the_end() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def reply() -> None:
        stream = await StreamedReply.start(send, 206, ((b"content-type", b"text/plain"),))
        await stream.chunk(b"a")
        await stream.chunk(b"b", more=False)
        other = await StreamedReply.start(send, 200, [])
        await other.end()

    asyncio.run(reply())
    assert sent == [
        {"type": "http.response.start", "status": 206,
         "headers": [(b"content-type", b"text/plain")]},
        {"type": "http.response.body", "body": b"a", "more_body": True},
        {"type": "http.response.body", "body": b"b", "more_body": False},
        {"type": "http.response.start", "status": 200, "headers": []},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
