"""Responses and Messages requests through the gateway: one policy chain, one translation.

A Responses or Messages body is translated to the chat completions body that means the same to
the model (api/responses.py, api/messages.py) as soon as it is read. From there it is an
ordinary chat request: the privacy scan reads every text the model will see (instructions,
system, input items, tool calls and results, tool definitions), images count as images,
pseudonymisation and the streamed restore work on the chat shape, and every endpoint that speaks
chat completions can take it. Only the answer is translated back, here, whole or event by event;
and the refusals of the chain go out in the client API's own error shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from edgecloud.api.errors import APIError
from edgecloud.api.messages import (
    MessagesStream,
    anthropic_error,
    anthropic_error_body,
    message_from_chat,
    messages_to_chat,
)
from edgecloud.api.replies import StreamCodec
from edgecloud.api.responses import ResponsesStream, response_from_chat, responses_to_chat


@dataclass(frozen=True, slots=True)
class ClientAPI:
    """An API the gateway serves by translation to chat completions."""

    name: str  # "responses" | "messages": also gen_ai.operation.name's source
    operation: str  # the OpenTelemetry GenAI operation name
    to_chat: Callable[[Any], dict[str, Any]]
    _whole: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
    _stream: Callable[[dict[str, Any], str], StreamCodec]
    error_body: Callable[[APIError], bytes] | None = None  # None: the OpenAI envelope

    def whole(self, data: bytes, status: int, request: dict[str, Any]) -> bytes:
        """A non-streamed chat answer (or error) in this API's shape."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data  # not JSON: relayed as it came (the breaker counted it)
        if status >= 400:
            if self.error_body is None or not isinstance(obj, dict):
                return data
            err = obj.get("error")
            message = err.get("message") if isinstance(err, dict) else None
            return anthropic_error_body(status, str(message or "The upstream failed."))
        return orjson.dumps(self._whole(obj, request))

    def codec(self, request: dict[str, Any]) -> StreamCodec:
        return self._stream(request, str(request.get("model") or ""))

    async def stream(self, chunks: AsyncIterator[bytes], codec: StreamCodec
                     ) -> AsyncIterator[bytes]:
        """A chat answer's server-sent events in, this API's events out."""
        buf = b""
        finished = False
        async for chunk in chunks:
            buf += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
            end = buf.rfind(b"\n\n")
            if end < 0:
                continue
            events, buf = buf[:end], buf[end + 2 :]
            out = b""
            for event in events.split(b"\n\n"):
                piece, finished = _translate_event(event, codec, finished)
                out += piece
            if out:
                yield out
        if not finished:  # the upstream ended without [DONE]: close the stream properly
            yield codec.done()


def _translate_event(event: bytes, codec: StreamCodec, finished: bool) -> tuple[bytes, bool]:
    payload = b""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
    if not payload or finished:
        return b"", finished
    if payload == b"[DONE]":
        return codec.done(), True
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return b"", finished
    if not isinstance(obj, dict):
        return b"", finished
    err = obj.get("error")
    if isinstance(err, dict):  # the upstream's mid-stream error event
        failure = APIError(str(err.get("message") or "The upstream failed."),
                           code=err.get("code") if isinstance(err.get("code"), str) else None)
        return codec.error(failure), True
    return codec.chunk(obj), finished


RESPONSES = ClientAPI(
    "responses", "chat", responses_to_chat,
    lambda chat, request: response_from_chat(chat, request),
    lambda request, model: ResponsesStream(request, model),
)
MESSAGES = ClientAPI(
    "messages", "chat", messages_to_chat,
    lambda chat, request: message_from_chat(chat, str(request.get("model") or "")),
    lambda request, model: MessagesStream(model),
    anthropic_error,
)
