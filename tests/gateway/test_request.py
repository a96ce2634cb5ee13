"""Request inspection and the in-place model rewrite (pure)."""

from __future__ import annotations

import orjson
import pytest

from edgecloud.api.errors import BadRequest
from edgecloud.gateway.request import inspect_chat, inspect_completion, parse_json, with_model


def _rewrite(body: dict, model: str) -> tuple[bytes, bytes]:
    raw = orjson.dumps(body)
    return raw, with_model(raw, orjson.loads(raw), model)


def test_model_is_spliced_in_place_and_nothing_else_changes() -> None:
    raw, out = _rewrite({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                         "top_p": 0.9}, "node")
    assert out == raw.replace(b'"gpt-4o-mini"', b'"node"')


def test_spaces_and_a_big_image_body() -> None:
    raw = b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": ' \
          b'{"url": "data:image/png;base64,' + b"A" * 3_000_000 + b'"}}]}], "model" :  "m"}'
    out = with_model(raw, orjson.loads(raw), "edge-vision")
    assert out == raw.replace(b'"m"}', b'"edge-vision"}')


@pytest.mark.parametrize("body", [
    {"model": "a", "messages": [], "extra_body": {"model": "a"}},  # two "model" keys
    {"model": "a\\u00e9", "messages": []},                          # an escaped value
    {"messages": [{"role": "user", "content": 'say "model": "a"'}], "model": "a",
     "tools": [{"model": "b"}] * 300},                               # dense quotes, two keys
])
def test_ambiguous_bodies_are_reserialised_correctly(body: dict) -> None:
    _, out = _rewrite(body, "x")
    assert orjson.loads(out) == {**body, "model": "x"}


def test_same_model_passes_the_original_bytes() -> None:
    raw = orjson.dumps({"model": "m", "messages": []})
    assert with_model(raw, orjson.loads(raw), "m") is raw


def test_inspection_collects_texts_and_images() -> None:
    facts = inspect_chat({"model": "m", "stream": True, "max_completion_tokens": 9, "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": '{"to": "a@b.io"}'}}]},
    ]})
    assert facts.texts == ["sys", "look", '{"to": "a@b.io"}'] and facts.images == 1
    assert facts.stream and facts.max_output_tokens == 9
    assert inspect_completion({"prompt": ["a", "b"]}).texts == ["a", "b"]


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"x"', b'{"a": "\xff"}', b"[" * 2000 + b"]" * 2000])
def test_parse_errors_are_bad_requests(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json(raw)
