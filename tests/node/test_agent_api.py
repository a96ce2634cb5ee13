"""What agent clients send, on a real node: structured outputs, tool calls, log-probabilities."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Annotated, Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.node.tool_history import tool_call, tool_exchange

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER_PARAMS},
}
CLOCK_PARAMS = {
    "type": "object",
    "properties": {"zone": {"type": "string"}},
    "required": ["zone"],
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": CLOCK_PARAMS}}


@pytest.fixture(scope="module")
def client(node: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node}/v1", api_key="unused", max_retries=0, timeout=300)


def _chat(client: openai.OpenAI, messages: Any, **params: Any) -> Any:
    """A chat request to the node's model."""
    return client.chat.completions.create(model="gemma-3-270m", messages=messages, **params)


def _error(r: httpx.Response, param: str, words: str = "") -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert words.lower() in err["message"].lower(), err


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {
                            "type": "object",
                            "properties": {"a": {"type": "string", "format": "email"}},
                        },
                    },
                }
            },
            "response_format.json_schema.schema",
            "email",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "patternProperties": {"^a": {}}},
                    },
                }
            },
            "response_format.json_schema.schema",
            "patternProperties",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "launch"}},
            },
            "tool_choice",
            "launch",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
            "tools.0.function.name",
            "",
        ),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", ""),
        ({"top_logprobs": 2}, "top_logprobs", "logprobs"),
    ],
)
def test_bad_requests_are_400(node: str, extra: dict[str, Any], param: str, words: str) -> None:
    r = httpx.post(node + CHAT, json={"messages": USER, "max_tokens": 4, **extra}, timeout=60)
    _error(r, param, words)


def test_unknown_tool_in_history_is_400(node: str) -> None:
    messages = tool_exchange(USER, tool_call("launch_rocket", "{}"), "done")
    r = httpx.post(node + CHAT, json={"messages": messages, "tools": [WEATHER]}, timeout=60)
    _error(r, "messages.1.tool_calls.0.function.name", "launch_rocket")


def test_completion_logprobs_limit(node: str) -> None:
    r = httpx.post(node + "/v1/completions", json={"prompt": "a", "logprobs": 21}, timeout=60)
    _error(r, "logprobs")


# -- structured outputs ------------------------------------------------------------------------


class Priority(StrEnum):
    low = "low"
    high = "high"


Short = Annotated[str, Field(max_length=40)]


class Task(BaseModel):
    title: Short
    priority: Priority
    minutes: int | None


class Plan(BaseModel):
    """Nested, with lists, an enum and optional fields; lists and strings bounded, as a careful
    schema author bounds them (and as a small model needs at temperature 1)."""

    owner: Short
    tasks: Annotated[list[Task], Field(max_length=3)]
    tags: Annotated[list[Short], Field(max_length=3)]
    done: bool
    note: Short | None = None


PLAN_PROMPT = [
    {
        "role": "system",
        "content": 'Answer with one short JSON object, e.g. {"owner": "Li", "tasks": [{"title": '
        '"Buy milk", "priority": "low", "minutes": 10}], "tags": ["home"], "done": false}',
    },
    {"role": "user", "content": "Plan my Saturday morning as JSON."},
]


@pytest.mark.timeout(1800)  # 20 answers; minutes on a loaded two-core machine
def test_sdk_parse_returns_valid_objects_at_temperature_one(client: openai.OpenAI) -> None:
    patient = client.with_options(timeout=1700)  # a request may queue behind three others

    def ask(seed: int) -> Any:
        try:
            return patient.chat.completions.parse(
                model="gemma-3-270m",
                messages=PLAN_PROMPT,  # type: ignore[arg-type]
                response_format=Plan,
                temperature=1.0,
                max_tokens=512,
                seed=seed,
            )
        except openai.LengthFinishReasonError:
            return None  # cut by max_tokens: the only way not to validate

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(20)))
    finished = [a for a in answers if a is not None]
    for resp in finished:
        message = resp.choices[0].message
        assert isinstance(message.parsed, Plan), message.content
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage.completion_tokens <= 512
    assert len(finished) >= 18


def test_json_object_mode_streams_a_json_object(node: str) -> None:
    body = {
        "messages": PLAN_PROMPT,
        "response_format": {"type": "json_object"},
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
    }
    text = ""
    with httpx.stream("POST", node + CHAT, json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                text += delta.get("content") or ""
    assert isinstance(json.loads(text), dict)


# -- tool calls --------------------------------------------------------------------------------


def _ask_tools(
    client: openai.OpenAI, messages: Any, tool_choice: Any, tools: Any = (WEATHER,), **params: Any
) -> Any:
    """A chat request that offers `tools` (the weather tool unless told)."""
    return _chat(client, messages, tools=list(tools), tool_choice=tool_choice, **params)


def _named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def test_forced_calls_and_free_requests_share_the_batch(client: openai.OpenAI) -> None:
    """Named and `required` calls at concurrency 4, free requests mixed in."""

    def forced(i: int) -> tuple[str, Any]:
        choice: Any = _named("get_weather") if i % 2 == 0 else "required"
        tools = (WEATHER, CLOCK)
        resp = _ask_tools(client, USER, choice, tools, temperature=1.0, max_tokens=256, seed=i)
        return ("named" if i % 2 == 0 else "required"), resp

    def free(i: int) -> tuple[str, Any]:
        story = [{"role": "user", "content": "Tell me a story."}]
        resp = _chat(client, story, temperature=1.0, max_tokens=48, seed=i)
        return "free", resp

    jobs = [(forced if i % 3 else free, i) for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: job[0](job[1]), jobs))
    kinds = [k for k, _ in results]
    assert kinds.count("free") == 4 and kinds.count("named") + kinds.count("required") == 8
    schemas = {"get_weather": WEATHER_PARAMS, "get_time": CLOCK_PARAMS}
    for kind, resp in results:
        choice = resp.choices[0]
        if kind == "free":
            assert choice.message.tool_calls is None and choice.message.content
            continue
        if choice.finish_reason == "length":
            continue  # cut by max_tokens; the grammar could not finish
        assert choice.finish_reason == "tool_calls", choice
        calls = choice.message.tool_calls
        assert calls and all(c.id.startswith("call_") for c in calls)
        for call in calls:
            if kind == "named":
                assert call.function.name == "get_weather"
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_streamed_tool_call_deltas_accumulate(client: openai.OpenAI) -> None:
    stream = _ask_tools(
        client, USER, _named("get_weather"), temperature=0, max_tokens=200, stream=True
    )
    name, args, finish, call_id = "", "", None, None
    for chunk in stream:
        choice = chunk.choices[0]
        for tc in choice.delta.tool_calls or ():
            assert tc.index == 0
            call_id = tc.id or call_id
            name += (tc.function and tc.function.name) or ""
            args += (tc.function and tc.function.arguments) or ""
        finish = choice.finish_reason or finish
    assert finish == "tool_calls" and call_id and name == "get_weather"
    jsonschema.validate(json.loads(args), WEATHER_PARAMS)


def test_tool_result_round_trip(client: openai.OpenAI) -> None:
    first = _ask_tools(client, USER, "required", temperature=0, max_tokens=200)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages = [
        *USER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C, light rain"},
    ]
    second = _ask_tools(client, messages, "none", temperature=0, max_tokens=24)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason in ("stop", "length")


# -- log-probabilities -------------------------------------------------------------------------


def test_chat_top_logprobs_at_temperature_zero(client: openai.OpenAI) -> None:
    count = [{"role": "user", "content": "Count: one, two,"}]
    resp = _chat(client, count, temperature=0, max_tokens=8, logprobs=True, top_logprobs=5)
    content = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and len(content) <= resp.usage.completion_tokens  # type: ignore[union-attr]
    text = ""
    for entry in content:
        top = entry.top_logprobs
        assert len(top) == 5
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert sum(math.exp(t.logprob) for t in top) <= 1.0 + 1e-6
        assert entry.token == top[0].token and entry.logprob == top[0].logprob  # greedy
        assert entry.logprob <= 0.0 and bytes(entry.bytes or []) == entry.token.encode()
        text += entry.token
    assert text == resp.choices[0].message.content


def test_streamed_completion_logprobs(node: str) -> None:
    body = {
        "prompt": "The capital of France is",
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": 3,
        "stream": True,
    }
    tokens: list[str] = []
    with httpx.stream("POST", node + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            lp = json.loads(line[6:])["choices"][0]["logprobs"]
            if lp:
                assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"])
                assert all(len(top) <= 3 for top in lp["top_logprobs"])
                tokens += lp["tokens"]
    whole = httpx.post(node + "/v1/completions", json={**body, "stream": False}, timeout=120)
    lp = whole.json()["choices"][0]["logprobs"]
    assert lp["tokens"] == tokens
    assert lp["text_offset"][0] == 0 and "".join(tokens) == whole.json()["choices"][0]["text"]
