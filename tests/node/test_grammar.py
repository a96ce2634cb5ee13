"""JSON Schema and tool-call grammars, run through llama.cpp's own grammar sampler."""

from __future__ import annotations

import json
from enum import StrEnum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from edgecloud.node.grammar import (
    UnsupportedSchema,
    int_range_rule,
    json_object_grammar,
    schema_grammar,
    tool_call_grammar,
)
from tests.node.grammar_check import Vocab


@pytest.fixture(scope="module")
def vocab(embedded_model_path: str) -> Vocab:
    return Vocab(embedded_model_path)


class Size(StrEnum):
    small = "small"
    large = "large"


class Line(BaseModel):
    sku: str
    quantity: int
    size: Size


class Order(BaseModel):
    customer: str
    lines: list[Line]
    gift: bool
    note: str | None = None
    tags: list[str] = []


def test_pydantic_model_grammar_accepts_valid_and_refuses_invalid(vocab: Vocab) -> None:
    g = schema_grammar(Order.model_json_schema())
    good = Order(customer="Ann", lines=[Line(sku="A-1", quantity=2, size=Size.large)], gift=True)
    assert vocab.accepts(g, good.model_dump_json())
    assert vocab.accepts(g, good.model_dump_json(exclude={"note", "tags"}))
    assert not vocab.accepts(g, '{"customer": "Ann"}')  # required fields missing
    bad_enum = good.model_dump_json().replace('"large"', '"medium"')
    assert not vocab.accepts(g, bad_enum)
    assert not vocab.accepts(g, '{"customer": "A\nB", "lines": [], "gift": true}')  # raw newline


def test_json_object_grammar(vocab: Vocab) -> None:
    g = json_object_grammar()
    assert vocab.accepts(g, '{"a": [1, 2.5, {"b": null}], "c": "d"}')
    assert not vocab.accepts(g, "[1, 2]")
    assert not vocab.accepts(g, '{"a": 1')


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "string", "minLength": 2, "pattern": "^a+$"}, "pattern"),
        ({"type": "number", "minimum": 0.5}, "minimum"),
        ({"type": "integer", "multipleOf": 3}, "multipleOf"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
        ({"not": {"type": "string"}}, "not"),
        ({"if": {"type": "string"}, "then": {}}, "if"),
        ({"type": "array", "items": {}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "email"}, "email"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"type": "array", "maxItems": 10**9}, "maxItems"),
        ({"type": "string", "pattern": "a{99999999}"}, "pattern"),
        ({"type": "object", "properties": {}, "required": ["x"]}, "required"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "bounds"),
        ({"type": "tuple"}, "type"),
        ({"properties": {"a": {"type": "object", "minProperties": 1}}}, "minProperties"),
    ],
)
def test_unsupported_keywords_are_named(schema: dict[str, object], keyword: str) -> None:
    with pytest.raises(UnsupportedSchema) as err:
        schema_grammar(schema)
    assert keyword in err.value.message
    assert err.value.status == 400


@settings(max_examples=150, deadline=None)
@given(
    lo=st.one_of(st.none(), st.integers(-1200, 1200)),
    span=st.one_of(st.none(), st.integers(0, 2500)),
    x=st.integers(-3000, 3000),
)
def test_integer_bounds(vocab: Vocab, lo: int | None, span: int | None, x: int) -> None:
    hi = None if span is None else (lo or 0) + span
    g = "root ::= " + int_range_rule(lo, hi)
    inside = (lo is None or x >= lo) and (hi is None or x <= hi)
    assert vocab.accepts(g, str(x)) == inside, (lo, hi, x)


def test_integer_bounds_from_schema(vocab: Vocab) -> None:
    g = schema_grammar(
        {
            "type": "object",
            "properties": {"n": {"type": "integer", "exclusiveMinimum": 0, "maximum": 10}},
            "required": ["n"],
        }
    )
    assert vocab.accepts(g, '{"n": 10}')
    assert not vocab.accepts(g, '{"n": 0}')
    assert not vocab.accepts(g, '{"n": 11}')
    assert not vocab.accepts(g, '{"n": 05}')


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}


def test_tool_call_grammar_forces_a_valid_call(vocab: Vocab) -> None:
    tools = [("get_weather", WEATHER), ("order", Order.model_json_schema()), ("ping", None)]
    g = tool_call_grammar(tools, prefix="<tool_call>\n", suffix="\n</tool_call>", max_calls=2)
    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}
    block = "<tool_call>\n" + json.dumps(call) + "\n</tool_call>"
    assert vocab.accepts(g, block)
    assert vocab.accepts(g, block + "\n" + block)
    assert not vocab.accepts(g, "\n".join([block] * 3))
    assert vocab.accepts(g, '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>')
    order = Order(customer="x", lines=[], gift=False).model_dump_json()
    assert vocab.accepts(g, f'<tool_call>\n{{"name": "order", "arguments": {order}}}\n</tool_call>')
    wrong = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "K"}}
    assert not vocab.accepts(g, "<tool_call>\n" + json.dumps(wrong) + "\n</tool_call>")
    assert not vocab.accepts(g, '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>')


def test_glm4_call_grammar_puts_the_name_first(vocab: Vocab) -> None:
    g = tool_call_grammar([("get_weather", WEATHER)], name_first=True)
    assert vocab.accepts(g, 'get_weather\n{"city": "Oslo", "unit": "F"}')
    assert not vocab.accepts(g, '{"name": "get_weather", "arguments": {}}')
