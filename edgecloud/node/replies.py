"""One request's answer in OpenAI's shapes: the choice of a whole reply, or the deltas of a
stream, with tool calls parsed out of the text and log-probabilities beside it.

Pure: the engine's text and log-probability entries in, JSON-ready dicts out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecloud.node.logprobs import (
    Piece,
    TokenLogprob,
    chat_logprobs_content,
    completion_logprobs,
    within_text,
)
from edgecloud.node.structured import OutputPlan
from edgecloud.node.tools import ToolCallParser, new_call_id, parse_calls


@dataclass
class ReplyBuilder:
    """Collects what the engine produced for one choice and renders it."""

    chat: bool
    plan: OutputPlan
    piece: Piece
    text_offset: int = 0  # completions with `echo`: where the generated text starts
    _parser: ToolCallParser | None = None
    _parts: list[str] = field(default_factory=list)
    _entries: list[TokenLogprob] = field(default_factory=list)
    _offset: int = 0

    def __post_init__(self) -> None:
        if self.chat and self.plan.tools.mode != "none":
            self._parser = self.plan.tools.parser()
        self._offset = self.text_offset

    # -- whole replies -------------------------------------------------------------------------
    def add(self, text: str, entries: Sequence[TokenLogprob] = ()) -> None:
        if text:
            self._parts.append(text)
        self._entries.extend(entries)

    def choice(self, finish_reason: str) -> dict[str, Any]:
        """The `choices[0]` of a non-streamed answer."""
        text = "".join(self._parts)
        entries = within_text(self._entries, self.piece, len(text.encode("utf-8")))
        logprobs: dict[str, Any] | None = None
        if not self.chat:
            if self.plan.logprobs is not None:
                logprobs = completion_logprobs(entries, self.piece, self.text_offset)
            return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        if self.plan.logprobs is not None:
            logprobs = {"content": chat_logprobs_content(entries, self.piece), "refusal": None}
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        tools = self.plan.tools
        if tools.mode != "none":
            content, calls = parse_calls(tools.syntax, text, tools.names)
            if calls:
                message["content"] = content
                message["tool_calls"] = [c.to_openai() for c in calls]
                finish_reason = _calls_finish(finish_reason)
        return {
            "index": 0,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }

    # -- streams -------------------------------------------------------------------------------
    def delta(self, text: str, entries: Sequence[TokenLogprob] = ()) -> tuple[Any, Any] | None:
        """(delta or text, logprobs) for one streamed chunk; None when there is nothing to send."""
        if self._parser is not None:
            text = self._parser.feed(text)
        if not text and not entries:
            return None
        return self._chunk(text, entries)

    def final_deltas(self, finish_reason: str) -> tuple[list[tuple[Any, Any]], str]:
        """The chunks that close a stream (held content, tool calls) and the finish reason."""
        out: list[tuple[Any, Any]] = []
        if self._parser is None:
            return out, finish_reason
        tail, calls = self._parser.finish()
        if tail:
            out.append(self._chunk(tail, ()))
        for i, call in enumerate(calls):
            head = {
                "index": i,
                "id": new_call_id(),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            out.append(({"tool_calls": [head]}, None))
            out.append(
                ({"tool_calls": [{"index": i, "function": {"arguments": call.arguments}}]}, None)
            )
        return out, _calls_finish(finish_reason) if calls else finish_reason

    def _chunk(self, text: str, entries: Sequence[TokenLogprob]) -> tuple[Any, Any]:
        logprobs: Any = None
        if self.chat:
            if self.plan.logprobs is not None and entries:
                logprobs = {"content": chat_logprobs_content(entries, self.piece), "refusal": None}
            return ({"content": text} if text else {}), logprobs
        if self.plan.logprobs is not None and entries:
            logprobs = completion_logprobs(entries, self.piece, self._offset)
        self._offset += len(text)
        return text, logprobs


def _calls_finish(finish_reason: str) -> str:
    return "tool_calls" if finish_reason == "stop" else finish_reason
