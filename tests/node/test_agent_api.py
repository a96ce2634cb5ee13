"""What agent clients send, on a real node: structured outputs, tool calls, log-probabilities."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

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
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "launch_rocket", "arguments": "{}"},
    }
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    ]
    r = httpx.post(node + CHAT, json={"messages": messages, "tools": [WEATHER]}, timeout=60)
    _error(r, "messages.1.tool_calls.0.function.name", "launch_rocket")


def test_completion_logprobs_limit(node: str) -> None:
    r = httpx.post(node + "/v1/completions", json={"prompt": "a", "logprobs": 21}, timeout=60)
    _error(r, "logprobs")
