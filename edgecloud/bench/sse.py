"""Cheap reading of an OpenAI server-sent-event stream, as bytes arrive.

Only what the bench needs: when each content-bearing event arrived, the `usage` of the final
chunk, the `timings` a llama.cpp-style server puts on its finishing chunk, `[DONE]`, and error
events. Events are found by byte search; JSON is parsed only for
the rare event that carries `usage` or `error`, never per token.
"""

from __future__ import annotations

from typing import Any

import orjson

_CONTENT_KEYS = (b'"content":', b'"text":')


def has_text(event: bytes) -> bool:
    """True when a chunk carries a non-empty `content` (chat) or `text` (completions) string."""
    for key in _CONTENT_KEYS:
        i = event.find(key)
        while i >= 0:
            j = i + len(key)
            while j < len(event) and event[j] == 32:  # optional space after the colon
                j += 1
            if event[j : j + 1] == b'"' and event[j + 1 : j + 2] != b'"':
                return True
            i = event.find(key, j)
    return False


class StreamScanner:
    """Feed it the raw bytes of a streamed response with their arrival times."""

    __slots__ = (
        "_buf",
        "_crlf",
        "token_times",
        "usage",
        "timings",
        "done",
        "events",
        "error",
        "bad",
        "texts",
    )

    def __init__(self, collect_text: bool = False) -> None:
        self._buf = b""
        self._crlf: bool | None = None
        self.token_times: list[float] = []  # arrival time of each content-bearing event
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None  # the server's own (llama-server, edgecloud)
        self.done = False  # saw `data: [DONE]`
        self.events = 0  # data events seen
        self.error: str | None = None  # message of an in-stream error event
        self.bad = False  # something that is not an SSE data stream
        # The generated text, only when asked for (a tokenizer will count it because the
        # server gives no usage): this is the one mode that parses every chunk.
        self.texts: list[str] | None = [] if collect_text else None

    def feed(self, data: bytes, t: float) -> None:
        if self._crlf is None:
            self._crlf = b"\r\n" in data
        if self._crlf:
            data = data.replace(b"\r\n", b"\n")
        buf = self._buf + data if self._buf else data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return
        self._buf = buf[end + 2 :]
        for event in buf[:end].split(b"\n\n"):
            self._event(event, t)

    def _event(self, event: bytes, t: float) -> None:
        if not event.startswith(b"data:"):
            # Comments (": ping"), `event:` lines, blank keep-alives: skip. Anything else that
            # does not look like SSE (an HTML page, plain JSON) marks the stream as bad.
            if event and not event.startswith((b":", b"event:", b"id:", b"retry:", b"\n")):
                self.bad = True
            return
        self.events += 1
        payload = event[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        if (b'"usage"' in payload and b'"usage":null' not in payload) or b'"timings"' in payload:
            self._parse_meta(payload)
        elif payload.startswith(b'{"error"') or b'"error":{' in payload:
            self._parse_meta(payload)
        if has_text(payload):
            self.token_times.append(t)
            if self.texts is not None:
                self.texts.append(chunk_text(payload))

    def _parse_meta(self, payload: bytes) -> None:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.bad = True
            return
        if not isinstance(obj, dict):
            self.bad = True
            return
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        timings = obj.get("timings")
        if isinstance(timings, dict):
            self.timings = timings
        err = obj.get("error")
        if err:
            self.error = str(err.get("message", err) if isinstance(err, dict) else err)[:200]


def chunk_text(payload: bytes) -> str:
    """The content (chat) or text (completions) of one chunk or one whole response."""
    try:
        obj = orjson.loads(payload)
        choice = obj["choices"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return ""
    for part in (choice.get("delta"), choice.get("message")):
        if isinstance(part, dict) and isinstance(part.get("content"), str):
            return str(part["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else ""
