"""Tool calls: planning and its 400s, the families' call syntax, streaming, chat templates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgecloud.api.errors import BadRequest
from edgecloud.api.openai import ChatCompletionRequest, parse_request
from edgecloud.node.answer import Answer
from edgecloud.node.prompt import ChatTemplate
from edgecloud.node.structured import OutputPlan, plan_output
from edgecloud.node.tools import GLM4, GLM45, HERMES, JSON, ToolCallParser, parse_calls
from tests.node.tool_history import tool_call, tool_exchange

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
USER = [{"role": "user", "content": "Weather in Paris?"}]

# A cut-down Qwen 2.5 template: it renders tools, tool calls and tool results.
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>\n{% for t in tools %}"
    "{{ t | tojson }}\n{% endfor %}</tools>\nReturn calls in <tool_call></tool_call> tags."
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n"
    "{% elif m.tool_calls %}<|im_start|>assistant\n{% for c in m.tool_calls %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n'
    "</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_TOOLS_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chat(**fields: Any) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, {"messages": USER, **fields})


def _plan(template: str | None, **fields: Any) -> OutputPlan:
    return plan_output(_chat(**fields), ChatTemplate(template))


def test_template_tool_support_is_probed() -> None:
    assert ChatTemplate(HERMES_TEMPLATE).supports_tools
    assert not ChatTemplate(NO_TOOLS_TEMPLATE).supports_tools
    assert not ChatTemplate(None).supports_tools


def test_auto_with_a_tool_template_parses_hermes_calls() -> None:
    plan = _plan(HERMES_TEMPLATE, tools=[WEATHER, TIME])
    assert plan.tools.mode == "auto" and plan.tools.syntax == HERMES and plan.grammar is None
    answer = Answer(True, plan, lambda t: b"")
    answer.add(
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    )
    answer.add("\n</tool_call>")
    whole = answer.whole("stop")
    assert whole.finish_reason == "tool_calls"
    assert whole.content == "Let me check.\n"
    (call,) = whole.tool_calls or []
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_auto_without_template_support_is_plain_text() -> None:
    for template in (None, NO_TOOLS_TEMPLATE):
        plan = _plan(template, tools=[WEATHER], tool_choice="auto")
        assert plan.tools.mode == "none" and plan.grammar is None
        answer = Answer(True, plan, lambda t: b"")
        answer.add('{"name": "get_weather", "arguments": {"city": "Paris"}}')
        whole = answer.whole("stop")
        assert whole.finish_reason == "stop" and whole.tool_calls is None


def test_required_and_named_choices_force_a_grammar() -> None:
    required = _plan(None, tools=[WEATHER, TIME], tool_choice="required")
    assert required.tools.mode == "forced" and required.grammar is not None
    named = _plan(
        None,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert named.grammar is not None and "get_time" in named.grammar
    assert "get_weather" not in named.grammar
    hermes = _plan(HERMES_TEMPLATE, tools=[WEATHER], tool_choice="required")
    assert "<tool_call>" in (hermes.grammar or "")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools.0.function.name",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"type": "string", "format": "email"}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ],
)
def test_bad_requests_are_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as err:
        plan_output(_chat(**fields), ChatTemplate(None))
    assert err.value.status == 400
    assert err.value.param == param


def test_history_is_checked() -> None:
    call = tool_call("get_weather", '{"city": "Oslo"}')
    good = tool_exchange(USER, call, "12 C")
    plan_output(
        parse_request(ChatCompletionRequest, {"messages": good, "tools": [WEATHER]}),
        ChatTemplate(None),
    )
    unknown = [
        *good[:1],
        {
            "role": "assistant",
            "tool_calls": [{**call, "function": {"name": "launch", "arguments": "{}"}}],
        },
    ]
    orphan = [*USER, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
    for messages, words in ((unknown, "launch"), (orphan, "call_9")):
        body = parse_request(ChatCompletionRequest, {"messages": messages, "tools": [WEATHER]})
        with pytest.raises(BadRequest, match=words):
            plan_output(body, ChatTemplate(None))


def test_tool_results_go_through_the_template() -> None:
    messages = tool_exchange(USER, tool_call("get_weather", '{"city": "Oslo"}'), "12 C and sunny")
    body = parse_request(ChatCompletionRequest, {"messages": messages, "tools": [WEATHER]})
    text = ChatTemplate(HERMES_TEMPLATE).render(body.messages, [WEATHER])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}' in text
    assert "<tool_response>\n12 C and sunny\n</tool_response>" in text
    assert '"name": "get_weather"' in text.split("</tools>")[0]
    plain = ChatTemplate(None).render(body.messages, [WEATHER])
    assert 'Assistant: {"name":"get_weather","arguments":{"city":"Oslo"}}' in plain
    assert "Tool: 12 C and sunny" in plain
    assert "get_weather" in plain.split("User:")[0]


@pytest.mark.parametrize(
    ("syntax", "text", "content", "calls"),
    [
        (
            HERMES,
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>'
            '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
            None,
            [("get_weather", {"city": "A"}), ("get_time", {})],
        ),
        (
            HERMES,
            '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
            '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
            [],
        ),
        (HERMES, "<tool_call>{not json", "<tool_call>{not json", []),
        (
            GLM45,
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n"
            "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
            None,
            [("get_weather", {"city": "Rome", "days": 3})],
        ),
        (GLM4, 'get_weather\n{"city": "Rome"}', None, [("get_weather", {"city": "Rome"})]),
        (GLM4, "get weather now", "get weather now", []),
        (JSON, '{"name": "get_time", "parameters": {}}', None, [("get_time", {})]),
        (JSON, "It is sunny.", "It is sunny.", []),
    ],
)
def test_parse_calls(
    syntax: str, text: str, content: str | None, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    got_content, got = parse_calls(syntax, text, ["get_weather", "get_time"])
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls


def test_streaming_parser_holds_back_only_what_may_be_a_call() -> None:
    p = ToolCallParser(HERMES, ["get_weather"])
    out = [
        p.feed(x)
        for x in [
            "Sure",
            ", one moment.",
            " <tool",
            '_call>\n{"name": ',
            '"get_weather", "arguments": {"city": "B"}}\n</tool_call>',
        ]
    ]
    assert "".join(out) == "Sure, one moment. "
    assert out[2] == " "  # "<tool" might open a call: held back
    tail, calls = p.finish()
    assert tail == "" and [c.name for c in calls] == ["get_weather"]
    q = ToolCallParser(HERMES, ["get_weather"])
    assert q.feed("a <tool") == "a "
    assert q.feed("box>") == "<toolbox>"
    assert q.finish() == ("", [])


def test_stream_deltas_for_tool_calls() -> None:
    plan = _plan(None, tools=[WEATHER], tool_choice="required")
    answer = Answer(True, plan, lambda t: b"")
    assert answer.delta('{"name": "get_weather", ') is None
    assert answer.delta('"arguments": {"city": "C"}}') is None
    pieces, finish = answer.closing("stop")
    assert finish == "tool_calls"
    head, args = (p.tool_calls[0] for p in pieces if p.tool_calls)
    assert head["index"] == 0 and head["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads(args["function"]["arguments"]) == {"city": "C"}
