"""Restoring surrogates in a streamed (server-sent events) answer, incrementally.

Complete events go out as soon as they are in; an event is parsed only when it may hold a
surrogate (see MAYBE_SURROGATE) or text was held back before it. Per text field of a choice
(`delta.content`, each `tool_calls[i].function.arguments`, a completion's `text`, ...) the
restorer holds back only the tail that could be the start of a surrogate, so a surrogate split
across any number of events comes back whole, in the event that completes it; every event is
still sent, none merged. Held-back text goes out with the choice's finishing event, or in an
event of its own before `[DONE]` or the end of the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from edgecloud.api.asgi import sse_event
from edgecloud.gateway.pseudonymize import MAYBE_SURROGATE, PREFIX_AT_STRING_END, Surrogates

_INCREMENTAL = frozenset({"content", "text", "arguments", "refusal", "reasoning_content",
                          "reasoning"})
# A path to a text field: the choice index, then dict keys (str) and list items (int, the
# item's "index" field, else its position).
Path = tuple[Any, ...]


class StreamRestorer:
    """Feed it the answer's bytes as they come; it returns the bytes to send on."""

    def __init__(self, surrogates: Surrogates) -> None:
        self.surrogates = surrogates
        self._buf = b""  # the start of an event not complete yet
        self._pending: dict[Path, str] = {}  # held-back text per field
        self._envelope: dict[str, Any] = {}  # id, object, created, model of the last event

    def feed(self, chunk: bytes) -> bytes:
        data = self._buf + chunk if self._buf else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")  # a lone \r at the end waits for its \n
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buf = data
            return b""
        end += 2
        self._buf = data[end:]
        head = data[:end] if self._buf else data
        if not self._pending:
            if MAYBE_SURROGATE.search(head) is None:
                return head
            if b"\\u" not in head and PREFIX_AT_STRING_END.search(head) is None:
                # Only whole surrogates, no escapes: restored as bytes, no parse needed.
                return self.surrogates.restore_json(head)
        return b"".join(self._event(e) for e in head[:-2].split(b"\n\n"))

    def end(self) -> bytes:
        """What is still held at the end of the stream (held-back text, an unfinished event)."""
        tail, self._buf = self._buf, b""
        return self._flush() + tail

    # -- one event -------------------------------------------------------------------------
    def _event(self, event: bytes) -> bytes:
        if not self._pending and MAYBE_SURROGATE.search(event) is None:
            return event + b"\n\n"
        if event.startswith(b"data:") and b"\n" not in event:  # the usual one-line event
            lines, i = [event], 0
        else:
            lines = event.split(b"\n")
            data_at = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
            if len(data_at) != 1:  # a comment, a keep-alive, a multi-line payload: as it is
                return event + b"\n\n"
            i = data_at[0]
        payload = lines[i][5:].lstrip(b" ")
        if payload == b"[DONE]":
            return self._flush() + event + b"\n\n"
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event + b"\n\n"
        choices = obj.get("choices") if type(obj) is dict else None
        if type(choices) is not list:
            return event + b"\n\n"
        self._envelope = obj
        for pos, choice in enumerate(choices):
            if type(choice) is dict:
                index = choice.get("index", pos)
                final = choice.get("finish_reason") is not None
                self._restore(choice, (index,), final)
                if final:
                    for path in [p for p in self._pending if p[0] == index]:
                        _inject(choice, path[1:], self._pending.pop(path))
        lines[i] = b"data: " + orjson.dumps(obj)
        return b"\n".join(lines) + b"\n\n" if len(lines) > 1 else lines[0] + b"\n\n"

    def _restore(self, obj: Any, path: Path, final: bool) -> None:
        in_list = type(obj) is list
        for k, v in enumerate(obj) if in_list else obj.items():
            t = type(v)
            if t is str:
                if k in _INCREMENTAL:
                    obj[k] = self._text(path + (k,), v, final)
                elif "[" in v:
                    obj[k] = self.surrogates.restore(v)
            elif (t is dict or t is list) and k != "logprobs":
                key = v.get("index", k) if in_list and t is dict else k
                self._restore(v, path + (key,), final)

    def _text(self, path: Path, text: str, final: bool) -> str:
        held = self._pending.pop(path, None)
        if held is not None:
            text = held + text
        if final or "[" not in text:
            return self.surrogates.restore(text)
        cut = self.surrogates.held_back(text)
        if cut < len(text):
            self._pending[path] = text[cut:]
            text = text[:cut]
        return self.surrogates.restore(text)

    def _flush(self) -> bytes:
        """Held-back text as events of its own (it was no surrogate after all)."""
        out = []
        while self._pending:
            path, text = self._pending.popitem()
            choice: dict[str, Any] = {"index": path[0]}
            _inject(choice, path[1:], text)
            choice["finish_reason"] = None
            envelope = {k: v for k, v in self._envelope.items() if k not in ("choices", "usage")}
            out.append(sse_event({**envelope, "choices": [choice]}))
        return b"".join(out)


def _inject(obj: Any, path: Path, text: str) -> None:
    """Put `text` at `path` under `obj`, creating what is missing (a delta, a tool call)."""
    for n, key in enumerate(path):
        last = n == len(path) - 1
        if isinstance(key, str):
            if last:
                current = obj.get(key)
                obj[key] = (current if isinstance(current, str) else "") + text
                return
            nxt = obj.get(key)
            if not isinstance(nxt, dict | list):
                nxt = obj[key] = [] if isinstance(path[n + 1], int) else {}
            obj = nxt
        else:
            found = next((x for x in obj if isinstance(x, dict) and x.get("index") == key), None)
            if found is None:
                found = {"index": key}
                obj.append(found)
            obj = found


class RestoredStream:
    """An async iterator over an answer's chunks with the surrogates restored."""

    def __init__(self, source: AsyncIterator[bytes], surrogates: Surrogates) -> None:
        self._source = source
        self._restorer = StreamRestorer(surrogates)
        self._done = False

    def __aiter__(self) -> RestoredStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            try:
                chunk = await self._source.__anext__()
            except StopAsyncIteration:
                self._done = True
                tail = self._restorer.end()
                if tail:
                    return tail
                break
            out = self._restorer.feed(chunk)
            if out:
                return out
        raise StopAsyncIteration
