"""One request's answer as the engine produced it, split into what OpenAI's reply carries:
content, tool calls parsed out of the text, and the log-probabilities beside it.

Pure: the engine's text and log-probability entries in; the pieces that `api.replies.Reply`
wraps into a whole answer or stream chunks out.
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
class WholeAnswer:
    content: str | None
    finish_reason: str
    logprobs: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None


@dataclass
class StreamPiece:
    """One chunk's worth: text (content), tool-call deltas (chat), log-probabilities."""

    text: str | None = None
    logprobs: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None


@dataclass
class Answer:
    """Collects what the engine produced for one choice and splits it up."""

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

    # -- whole answers -------------------------------------------------------------------------
    def add(self, text: str, entries: Sequence[TokenLogprob] = ()) -> None:
        if text:
            self._parts.append(text)
        self._entries.extend(entries)

    def whole(self, finish_reason: str) -> WholeAnswer:
        """The answer of a non-streamed request."""
        text = "".join(self._parts)
        entries = within_text(self._entries, self.piece, len(text.encode("utf-8")))
        answer = WholeAnswer(text, finish_reason)
        if self.plan.logprobs is not None:
            answer.logprobs = self._logprobs(entries, self.text_offset)
        tools = self.plan.tools
        if self.chat and tools.mode != "none":
            content, calls = parse_calls(tools.syntax, text, tools.names)
            if calls:
                answer.content = content
                answer.tool_calls = [c.to_openai() for c in calls]
                answer.finish_reason = _calls_finish(finish_reason)
        return answer

    # -- streams -------------------------------------------------------------------------------
    def delta(self, text: str, entries: Sequence[TokenLogprob] = ()) -> StreamPiece | None:
        """What one engine event adds to the stream; None when there is nothing to send."""
        if self._parser is not None:
            text = self._parser.feed(text)
        if not text and not entries:
            return None
        out = StreamPiece(text or None)
        if self.plan.logprobs is not None and entries:
            out.logprobs = self._logprobs(entries, self._offset)
        self._offset += len(text)
        return out

    def closing(self, finish_reason: str) -> tuple[list[StreamPiece], str]:
        """The pieces that close a stream (held content, then each call) and the finish reason.

        A call goes out as OpenAI streams it: `index`, `id`, `type` and the name first, then
        the arguments.
        """
        if self._parser is None:
            return [], finish_reason
        tail, calls = self._parser.finish()
        out = [StreamPiece(tail)] if tail else []
        for i, call in enumerate(calls):
            head = {
                "index": i,
                "id": new_call_id(),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            args = {"index": i, "function": {"arguments": call.arguments}}
            out += [StreamPiece(tool_calls=[head]), StreamPiece(tool_calls=[args])]
        return out, _calls_finish(finish_reason) if calls else finish_reason

    def _logprobs(self, entries: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
        if self.chat:
            return {"content": chat_logprobs_content(entries, self.piece), "refusal": None}
        return completion_logprobs(entries, self.piece, offset)


def _calls_finish(finish_reason: str) -> str:
    return "tool_calls" if finish_reason == "stop" else finish_reason
