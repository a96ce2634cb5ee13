"""The Responses and Messages translations to and from chat completions: pure, tested directly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edgecloud.api.errors import APIError, BadRequest
from edgecloud.api.messages import MessagesStream, message_from_chat, messages_to_chat
from edgecloud.api.replies import Reply
from edgecloud.api.responses import ResponsesStream, response_from_chat, responses_to_chat
from edgecloud.gateway.translate import MESSAGES, RESPONSES


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "data" in lines:
            obj = json.loads(lines["data"])
            assert lines.get("event") == obj["type"]  # the SSE event name is the type
            out.append(obj)
    return out


def _chat_stream(text_pieces: list[str], calls: list[tuple[str, str]] | None = None,
                 finish: str = "stop") -> list[dict[str, Any]]:
    reply = Reply("m", chat=True)
    chunks = [reply.chunk(role=True)] + [reply.chunk(p) for p in text_pieces]
    for i, (name, args) in enumerate(calls or []):
        chunks.append(reply.chunk(tool_calls=[{"index": i, "id": f"call_{i}", "type": "function",
                                               "function": {"name": name, "arguments": ""}}]))
        chunks.append(reply.chunk(tool_calls=[{"index": i, "function": {"arguments": args}}]))
    chunks.append(reply.chunk(None, finish))
    chunks.append(reply.usage_chunk({"prompt_tokens": 7, "completion_tokens": 3,
                                     "total_tokens": 10}))
    return chunks


def test_responses_request_becomes_the_same_chat_request() -> None:
    chat = responses_to_chat({
        "model": "x", "instructions": "Be brief.", "max_output_tokens": 9, "temperature": 0.5,
        "stream": True, "tool_choice": {"type": "function", "name": "f"},
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
        ]})
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png")
    assert [c["id"] for c in chat["messages"][2]["tool_calls"]] == ["c1", "c2"]  # one turn
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "one"}
    assert chat["max_completion_tokens"] == 9 and chat["stream_options"]["include_usage"]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"]["json_schema"]["schema"] == {"type": "object"}


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "previous_response_id": "r"}, "previous_response_id"),
    ({"input": []}, "input"),
    ({"input": [{"type": "input_file"}]}, "input[0]"),
    ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0]"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format"),
])
def test_responses_refusals_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as err:
        responses_to_chat(body)
    assert err.value.param == param


def test_responses_stream_events_in_order_with_usage() -> None:
    codec = ResponsesStream({"model": "m"}, "m")
    raw = b"".join(codec.chunk(c) for c in _chat_stream(["Hel", "lo"], [("f", "{\"a\":1}")],
                                                        "tool_calls")) + codec.done()
    events = _events(raw)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1]["arguments"] == "{\"a\":1}"
    assert final["output"][1]["call_id"] == "call_0"
    assert final["usage"]["input_tokens"] == 7 and final["usage"]["output_tokens"] == 3


def test_responses_whole_answer_and_length_is_incomplete() -> None:
    chat = Reply("m", chat=True).completion("Hi", "length", {"prompt_tokens": 2,
                                                             "completion_tokens": 1})
    r = response_from_chat(chat, {"model": "m"})
    assert r["status"] == "incomplete"
    assert r["incomplete_details"] == {"reason": "max_output_tokens"}
    assert r["output"][0]["content"][0]["text"] == "Hi" and r["store"] is False


def test_messages_request_becomes_the_same_chat_request() -> None:
    chat = messages_to_chat({
        "model": "x", "max_tokens": 5, "system": [{"type": "text", "text": "S"}],
        "stop_sequences": ["END"], "tool_choice": {"type": "any"},
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {
                "type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "text", "text": "what?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                               "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": "ok", "is_error": True},
                                         {"type": "text", "text": "and?"}]},
        ]})
    m = chat["messages"]
    assert m[0] == {"role": "system", "content": "S"}
    assert m[1]["content"][0]["image_url"]["url"] == "data:image/png;base64,AAAA"
    assert m[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{\"a\":1}"}
    assert m[3] == {"role": "tool", "tool_call_id": "t1", "content": "Error: ok"}
    assert m[4] == {"role": "user", "content": [{"type": "text", "text": "and?"}]}
    assert chat["stop"] == ["END"] and chat["tool_choice"] == "required"
    with pytest.raises(BadRequest, match="max_tokens"):
        messages_to_chat({"messages": [{"role": "user", "content": "x"}]})


def test_messages_stream_events_and_stop_sequence() -> None:
    codec = MessagesStream("m", input_tokens=7)
    chunks = _chat_stream(["a", "b"], [("f", "{\"q\":2}")], "tool_calls")
    events = _events(b"".join(codec.chunk(c) for c in chunks) + codec.done())
    kinds = [e["type"] for e in events]
    assert kinds == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_delta", "content_block_stop", "content_block_start",
                     "content_block_delta", "content_block_stop", "message_delta",
                     "message_stop"]
    assert events[0]["message"]["usage"]["input_tokens"] == 7
    assert events[5]["content_block"]["type"] == "tool_use" and events[5]["index"] == 1
    assert events[6]["delta"] == {"type": "input_json_delta", "partial_json": "{\"q\":2}"}
    assert events[8]["delta"]["stop_reason"] == "tool_use"
    whole = Reply("m", chat=True).completion("x", "stop")
    whole["choices"][0]["stop_sequence"] = "END"
    msg = message_from_chat(whole)
    assert msg["stop_reason"] == "stop_sequence" and msg["stop_sequence"] == "END"


def test_the_gateway_translates_a_chat_stream_split_anywhere() -> None:
    chunks = _chat_stream(["Hel", "lo ", "[EMAIL_1]"])
    wire = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    wire += b"data: [DONE]\n\n"

    async def pieces(size: int) -> AsyncIterator[bytes]:
        for i in range(0, len(wire), size):
            yield wire[i:i + size]

    async def run(api: Any, size: int) -> bytes:
        codec = api.codec({"model": "m", "max_tokens": 4})
        return b"".join([p async for p in api.stream(pieces(size), codec)])

    for size in (1, 7, 4096):
        r = _events(asyncio.run(run(RESPONSES, size)))
        assert r[-1]["type"] == "response.completed"
        assert r[-1]["response"]["output"][0]["content"][0]["text"] == "Hello [EMAIL_1]"
        m = _events(asyncio.run(run(MESSAGES, size)))
        assert "".join(e["delta"]["text"] for e in m if e["type"] == "content_block_delta") == (
            "Hello [EMAIL_1]")
        assert m[-1]["type"] == "message_stop"


def test_an_upstream_error_becomes_the_apis_error() -> None:
    body = json.dumps({"error": {"message": "no", "type": "x", "code": "c"}}).encode()
    assert json.loads(MESSAGES.whole(body, 429, {})) == {
        "type": "error", "error": {"type": "rate_limit_error", "message": "no"}}
    assert RESPONSES.whole(body, 429, {}) == body
    codec = MESSAGES.codec({"model": "m"})
    tail = _events(codec.error(APIError("gone", status=503)))
    assert tail[-1] == {"type": "error", "error": {"type": "overloaded_error", "message": "gone"}}
