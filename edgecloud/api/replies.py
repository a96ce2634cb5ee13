"""OpenAI reply bodies built in one place: completions, stream chunks, usage, SSE errors.

The node builds its answers here, the gateway its mid-stream error event, and the test stand-ins
that play an OpenAI server use the same builders, so every part speaks the same wire format.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

from edgecloud.api.errors import APIError

FINGERPRINT = "edgecloud"


class StreamCodec(Protocol):
    """Chat stream chunks in, another API's server-sent events out (Responses, Messages)."""

    def chunk(self, chunk: dict[str, Any]) -> bytes: ...

    def done(self) -> bytes: ...

    def error(self, err: APIError) -> bytes: ...


def sse_error(err: APIError) -> bytes:
    """The event that ends a stream that failed after it began (status already 200)."""
    return b"data: " + err.body() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """The `usage` object; `prompt_tokens_details` only when some prompt tokens were cached."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


class Reply:
    """The answer to one chat or text completion request, whole or as stream chunks."""

    __slots__ = ("chat", "id", "model", "created", "fingerprint", "_usage_null")

    def __init__(self, model: str, *, chat: bool, reply_id: str | None = None,
                 created: int | None = None, fingerprint: str | None = FINGERPRINT,
                 include_usage: bool = False) -> None:
        self.chat = chat
        self.id = reply_id or (("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24])
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.fingerprint = fingerprint
        # With stream_options.include_usage, every chunk carries "usage": null until the last.
        self._usage_null = include_usage

    def _head(self, obj: str) -> dict[str, Any]:
        head: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created,
                                "model": self.model}
        if self.fingerprint is not None:
            head["system_fingerprint"] = self.fingerprint
        return head

    def _one_choice(self, chat_object: str, key: str, part: dict[str, Any], text: str | None,
                    tool_calls: list[dict[str, Any]] | None, logprobs: Any,
                    finish_reason: str | None) -> dict[str, Any]:
        """A body with one choice: chat answers carry `part` (with any `tool_calls`) under `key`,
        completions the text; then its log-probabilities and finish reason."""
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            if tool_calls:
                part["tool_calls"] = tool_calls
            choice[key] = part
        else:
            choice["text"] = text or ""
        choice["logprobs"] = logprobs
        choice["finish_reason"] = finish_reason
        body = self._head(chat_object if self.chat else "text_completion")
        body["choices"] = [choice]
        return body

    def completion(self, text: str | None, finish_reason: str | None,
                   usage: dict[str, Any] | None = None, *, logprobs: Any = None,
                   tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A whole (non-streamed) answer; chat answers may carry `tool_calls` (content null)."""
        message: dict[str, Any] = {"role": "assistant", "content": text}
        body = self._one_choice("chat.completion", "message", message, text, tool_calls,
                                logprobs, finish_reason)
        if usage is not None:
            body["usage"] = usage
        return body

    def chunk(self, text: str | None = None, finish_reason: str | None = None, *,
              role: bool = False, logprobs: Any = None,
              tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """One stream chunk: a piece of text, the opening role (chat), tool-call deltas (chat),
        or the finish reason; with the log-probabilities of its tokens when asked for."""
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
            delta["content"] = text or ""
        elif text is not None:
            delta["content"] = text
        body = self._one_choice("chat.completion.chunk", "delta", delta, text, tool_calls,
                                logprobs, finish_reason)
        if self._usage_null:
            body["usage"] = None
        return body

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The last chunk of a stream that asked for usage: no choices, the usage."""
        body = self._head("chat.completion.chunk" if self.chat else "text_completion")
        body["choices"] = []
        body["usage"] = usage
        return body
