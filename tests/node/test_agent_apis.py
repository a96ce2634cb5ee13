"""Responses, Messages and embeddings on a real node, through the official SDKs.

The embedded model is a small base model: these tests assert shapes and behaviour (typed events,
forced calls, schema-valid JSON, key checks), never the quality of an answer.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import numpy as np
import openai
import pytest

from edgecloud.bench.workloads import png_bytes
from tests.conftest import serve_node

pytestmark = pytest.mark.slow

KEY = "node-key-for-tests"
MODEL = "gemma-3-270m"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


def _events_and_final(stream: Any) -> tuple[list[str], Any]:
    """A Responses stream's event types and its final Response (completed or incomplete: the
    SDK's get_final_response takes only the first, as it does against OpenAI)."""
    events = list(stream)
    assert events[-1].type in ("response.completed", "response.incomplete")
    return [e.type for e in events], events[-1].response


def _png_b64(seed: int) -> str:
    return base64.b64encode(png_bytes(seed, 320, 640, target_bytes=20_000)).decode()


@pytest.fixture(scope="module")
def agent_node(tmp_path_factory: pytest.TempPathFactory, tiny_mmproj_path: str) -> Iterator[str]:
    """A node with the generated projector (images) and an API key."""
    tmp = tmp_path_factory.mktemp("agent-node")
    yield from serve_node(
        tmp, "--mmproj", tiny_mmproj_path, "--parallel", "4", "--ctx", "2048",
        "--api-key-env", "EDGECLOUD_TEST_NODE_KEY", name="agent-node",
        env={"EDGECLOUD_TEST_NODE_KEY": KEY}, ready_timeout_s=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def oai(agent_node: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{agent_node}/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def claude(agent_node: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=agent_node, api_key=KEY, max_retries=0, timeout=300)


# -- /v1/models and the key -----------------------------------------------------------------
def test_models_say_which_apis(agent_node: str) -> None:
    model = httpx.get(f"{agent_node}/v1/models").json()["data"][0]
    assert {"chat.completions", "responses", "messages", "embeddings"} <= set(model["apis"])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"])
def test_inference_routes_need_the_key(agent_node: str, path: str) -> None:
    body = {"input": "hi", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for headers in ({}, {"authorization": "Bearer wrong"}):
        r = httpx.post(agent_node + path, json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    ok = httpx.post(agent_node + path, json={**body, "max_output_tokens": 1},
                    headers={"x-api-key": KEY})
    assert ok.status_code == 200, ok.text


def test_messages_errors_are_in_anthropic_shape(agent_node: str) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{agent_node}/v1/messages", json=body)
    assert r.status_code == 401
    assert r.json() == {"type": "error", "error": {"type": "authentication_error",
                                                   "message": r.json()["error"]["message"]}}
    bad = httpx.post(f"{agent_node}/v1/messages", json={**body, "max_tokens": None},
                     headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in bad.json()["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=agent_node, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])


# -- Responses --------------------------------------------------------------------------------
def test_responses_create_text(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model=MODEL, instructions="Answer briefly.",
                             input="Name a colour.", max_output_tokens=8, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    assert r.output_text
    assert r.usage is not None and r.usage.input_tokens > 0
    assert 0 < r.usage.output_tokens <= 8
    if r.status == "incomplete":
        assert r.incomplete_details is not None
        assert r.incomplete_details.reason == "max_output_tokens"


def test_responses_stream_typed_events(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model=MODEL, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Count: one, two,"}]},
    ], max_output_tokens=12, temperature=0, top_p=0.9) as stream:
        kinds, final = _events_and_final(stream)
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_item.added" in kinds and "response.content_part.added" in kinds
    assert kinds.count("response.output_text.delta") >= 1
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert final.output_text and final.usage is not None and final.usage.output_tokens > 0


def test_responses_image_via_projector(oai: openai.OpenAI) -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64," + _png_b64(1)}
    content: Any = [{"type": "input_text", "text": "What is on this screen?"}, image]
    r = oai.responses.create(model=MODEL, input=[{"role": "user", "content": content}],
                             max_output_tokens=4)
    text_only = oai.responses.create(model=MODEL, input="What is on this screen?",
                                     max_output_tokens=4)
    assert r.usage is not None and text_only.usage is not None
    assert r.usage.input_tokens >= text_only.usage.input_tokens + 64  # the image's tokens
    with oai.responses.stream(model=MODEL, input=[{"role": "user", "content": content}],
                              max_output_tokens=4) as stream:
        _, final = _events_and_final(stream)
    assert final.usage is not None and final.usage.input_tokens == r.usage.input_tokens


FUNCTION_TOOL: Any = {"type": "function", "name": "get_weather", "description": "Forecast",
                      "parameters": WEATHER_SCHEMA, "strict": True}


def test_responses_forced_function_call(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model=MODEL, input="Weather in Paris for 3 days?",
                             tools=[FUNCTION_TOOL],
                             tool_choice={"type": "function", "name": "get_weather"},
                             max_output_tokens=64)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_SCHEMA)
    # The call and its output go back as input items: a valid next turn.
    follow = oai.responses.create(model=MODEL, tools=[FUNCTION_TOOL], max_output_tokens=4,
                                  input=[{"role": "user", "content": "Weather in Paris?"},
                                         calls[0].model_dump(exclude_none=True),
                                         {"type": "function_call_output",
                                          "call_id": calls[0].call_id, "output": "sunny"}])
    assert follow.status in ("completed", "incomplete")


def test_responses_stream_forced_function_call(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model=MODEL, input="Weather in Oslo?", tools=[FUNCTION_TOOL],
                              tool_choice="required", max_output_tokens=64) as stream:
        kinds, final = _events_and_final(stream)
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    calls = [o for o in final.output if o.type == "function_call"]
    assert len(calls) == 1
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_SCHEMA)


def test_responses_json_schema(oai: openai.OpenAI) -> None:
    fmt: Any = {"format": {"type": "json_schema", "name": "weather", "schema": WEATHER_SCHEMA,
                           "strict": True}}
    r = oai.responses.create(model=MODEL, input="Weather in Rome as JSON.", text=fmt,
                             max_output_tokens=64)
    jsonschema.validate(json.loads(r.output_text), WEATHER_SCHEMA)


def test_responses_refuses_what_a_stateless_node_cannot_do(agent_node: str) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    for extra, param in (({"previous_response_id": "resp_1"}, "previous_response_id"),
                         ({"tools": [{"type": "web_search"}]}, "tools[0]"),
                         ({"input": [{"type": "input_file", "file_id": "f"}]}, "input[0]")):
        r = httpx.post(f"{agent_node}/v1/responses", headers=headers,
                       json={"model": MODEL, "input": "hi", **extra})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
    stored = httpx.get(f"{agent_node}/v1/responses/resp_123", headers=headers)
    assert stored.status_code == 404
    assert stored.json()["error"]["code"] == "response_not_stored"


# -- Messages ---------------------------------------------------------------------------------
def test_messages_create_and_stop_sequence(claude: anthropic.Anthropic) -> None:
    # Greedy, so the base model's answer is the same each run (sampled, it may be only
    # whitespace or the start of the next turn, which leaves no text block).
    m = claude.messages.create(model=MODEL, max_tokens=8, system="Be brief.",
                               extra_body={"temperature": 0},
                               messages=[{"role": "user", "content": "Say something."}])
    assert m.type == "message" and m.role == "assistant"
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.content and m.content[0].type == "text"
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 8
    # Every character as a stop sequence: the first one ends the answer.
    stops = [chr(c) for c in range(32, 127) if chr(c) not in " "][:16]
    s = claude.messages.create(model=MODEL, max_tokens=32, stop_sequences=stops,
                               messages=[{"role": "user", "content": "Write a long sentence."}])
    if s.stop_reason == "stop_sequence":
        assert s.stop_sequence in stops


def test_messages_stream_text(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model=MODEL, max_tokens=10, extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": "Count: one, two,"}]
                                ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop",
            "message_delta"} <= set(kinds)
    assert final.content[0].type == "text" and final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


def test_messages_image(claude: anthropic.Anthropic) -> None:
    content: Any = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": _png_b64(2)}},
        {"type": "text", "text": "What is on this screen?"},
    ]
    m = claude.messages.create(model=MODEL, max_tokens=4,
                               messages=[{"role": "user", "content": content}])
    count = claude.messages.count_tokens(model=MODEL,
                                         messages=[{"role": "user", "content": content}])
    assert count.input_tokens >= 64
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) == count.input_tokens
    with claude.messages.stream(model=MODEL, max_tokens=4,
                                messages=[{"role": "user", "content": content}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens")


ANTHROPIC_TOOL: Any = {"name": "get_weather", "description": "Forecast",
                       "input_schema": WEATHER_SCHEMA}


def test_messages_forced_tool_use_and_result(claude: anthropic.Anthropic) -> None:
    question = {"role": "user", "content": "Weather in Lima for 2 days?"}
    m = claude.messages.create(model=MODEL, max_tokens=64, tools=[ANTHROPIC_TOOL],
                               tool_choice={"type": "tool", "name": "get_weather"},
                               messages=[question])  # type: ignore[list-item]
    uses = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use" and len(uses) == 1
    jsonschema.validate(uses[0].input, WEATHER_SCHEMA)
    with claude.messages.stream(model=MODEL, max_tokens=64, tools=[ANTHROPIC_TOOL],
                                tool_choice={"type": "any"},
                                messages=[question]) as stream:  # type: ignore[list-item]
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "content_block_start" in kinds
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len(streamed) == 1
    jsonschema.validate(streamed[0].input, WEATHER_SCHEMA)
    # The tool's result goes back: a valid next turn.
    follow = claude.messages.create(
        model=MODEL, max_tokens=4, tools=[ANTHROPIC_TOOL],
        messages=[question, {"role": "assistant", "content": [uses[0].model_dump()]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                "content": "sunny"}]}],  # type: ignore[list-item]
    )
    assert follow.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_count_tokens_matches_usage(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "How many tokens is this?"}]
    count = claude.messages.count_tokens(model=MODEL, system="Be brief.", messages=messages)
    m = claude.messages.create(model=MODEL, max_tokens=1, system="Be brief.", messages=messages)
    assert count.input_tokens == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)


# -- embeddings -------------------------------------------------------------------------------
def test_embeddings_float_and_base64(oai: openai.OpenAI) -> None:
    texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell."]
    r = oai.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    vectors = np.array([d.embedding for d in r.data])
    assert [d.index for d in r.data] == [0, 1, 2] and vectors.shape == (3, 640)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    # The SDK asks for base64 by default and decodes it: the same vectors.
    again = oai.embeddings.create(model=MODEL, input=texts)
    assert np.allclose(np.array([d.embedding for d in again.data]), vectors, atol=1e-5)
    one = oai.embeddings.create(model=MODEL, input=texts[0], dimensions=640)
    assert np.allclose(one.data[0].embedding, vectors[0], atol=1e-5)  # batched == alone


def test_embeddings_bad_input(agent_node: str) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    for body, param in (({"input": []}, "input"), ({"input": [""]}, "input"),
                        ({"input": "x", "dimensions": 64}, "dimensions"),
                        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
                        ({"input": [[1, 2, 10_000_000]]}, "input")):
        r = httpx.post(f"{agent_node}/v1/embeddings", json=body, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


def test_a_key_asked_for_but_not_set_stops_the_start() -> None:
    """--api-key-env naming an unset variable is an error, never a node open to all."""
    import subprocess

    from edgecloud.supervise import edgecloud_command

    env = {k: v for k, v in os.environ.items() if k != "EDGECLOUD_TEST_UNSET_KEY"}
    done = subprocess.run(edgecloud_command("serve", "--api-key-env", "EDGECLOUD_TEST_UNSET_KEY",
                                            "--port", "1"),
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "EDGECLOUD_TEST_UNSET_KEY" in done.stderr
