"""Request inspection and the in-place model rewrite (pure)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.api.errors import BadRequest
from edgecloud.api.messages import messages_to_chat
from edgecloud.api.responses import responses_to_chat
from edgecloud.gateway.request import (
    inspect_chat,
    inspect_completion,
    inspect_count_tokens,
    inspect_embeddings,
    parse_body,
    parse_json,
    with_model,
    with_model_parts,
)


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


def test_tool_traffic_is_scanned_for_personal_data() -> None:
    """Tool results, call arguments (string or object) and tool definitions all reach the
    model's prompt, so the privacy scan sees them."""
    from edgecloud.gateway.privacy import PrivacyDetector

    facts = inspect_chat({"tools": [{"type": "function", "function": {
        "name": "mail", "description": "Send mail as ops@corp.example",
        "parameters": {"type": "object", "properties": {"to": {"enum": ["x@y.example"]}}}}}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "mail",
                                                               "arguments": {"to": "a@b.io"}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sent; card 4111 1111 1111 1111"},
        ]})
    assert '{"to":"a@b.io"}' in facts.texts
    assert "sent; card 4111 1111 1111 1111" in facts.texts
    assert "Send mail as ops@corp.example" in facts.texts and "x@y.example" in facts.texts
    detector = PrivacyDetector(["bank_card"])
    assert detector.detect(facts.texts) == "bank_card"


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"x"', b'{"a": "\xff"}', b"[" * 2000 + b"]" * 2000])
def test_parse_errors_are_bad_requests(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json(raw)


# -- parse_body: large images left out of the parse, never at the cost of a text -------------

def _b64(n: int, seed: int = 3) -> str:
    import base64
    import random

    return base64.b64encode(random.Random(seed).randbytes(n)).decode()


def _uri(n: int = 300_000, seed: int = 3) -> str:
    return "data:image/png;base64," + _b64(n, seed)


def _same_facts(raw: bytes) -> bool:
    """parse_body's facts equal those of a whole parse; returns whether it elided."""
    body, elided = parse_body(raw)
    fast, whole = inspect_chat(body), inspect_chat(parse_json(raw))
    assert (fast.texts, fast.images, fast.text_chars, fast.model, fast.stream) == (
        whole.texts, whole.images, whole.text_chars, whole.model, whole.stream)
    for model in ("other-model", whole.model):
        assert b"".join(with_model_parts(raw, body, model, elided)) == with_model(
            raw, parse_json(raw), model)
    return elided


def _chat(*parts: object, extra: dict[str, object] | None = None) -> bytes:
    return orjson.dumps({"model": "autoglm-phone-9b", "stream": True, **(extra or {}),
                         "messages": [{"role": "system", "content": "You are a phone agent."},
                                      {"role": "user", "content": list(parts)}]})


def test_a_screenshot_is_left_out_of_the_parse_and_forwarded_whole() -> None:
    raw = _chat({"type": "text", "text": "Call 13812345678 for me"},
                {"type": "image_url", "image_url": {"url": _uri()}},
                {"type": "image_url", "image_url": _uri(200_000, 4)},  # the string form
                {"type": "image_url", "image_url": {"url": _uri(3_000, 5)}})  # small: parsed
    assert _same_facts(raw)
    body, _ = parse_body(raw)
    assert inspect_chat(body).images == 3


def test_a_data_uri_anywhere_but_an_image_part_is_parsed_whole() -> None:
    uri = _uri()
    cases = [
        _chat({"type": "text", "text": uri}),  # a text that is a data URI
        _chat({"type": "text", "text": 'said "' + uri + '"'}),  # escaped quotes around it
        _chat({"type": "text", "text": "x"}, extra={uri: 1}),  # a key
        _chat({"type": "text", "text": "x"}, extra={"metadata": {"shot": uri}}),
        orjson.dumps({"model": "m", "messages": [{"role": "user", "content": uri}]}),
    ]
    for raw in cases:
        assert not _same_facts(raw)


def test_a_text_with_the_placeholder_marker_is_parsed_whole() -> None:
    from edgecloud.gateway.request import _NONCE

    raw = _chat({"type": "text", "text": f"~elided~0~{_NONCE}"},
                {"type": "image_url", "image_url": {"url": _uri()}})
    assert not _same_facts(raw)


def test_broken_image_data_gets_the_same_400_as_before() -> None:
    for bad in (_uri()[:-1], _uri() + "!", "data:image/png;base64,@" + _b64(300_000)[1:]):
        raw = _chat({"type": "image_url", "image_url": {"url": bad}})
        with pytest.raises(BadRequest, match="broken base64"):
            inspect_chat(parse_body(raw)[0])
    with pytest.raises(BadRequest):
        parse_body(_chat({"type": "image_url", "image_url": {"url": _uri()}})[:-1])


# Any JSON a client can send, built from the keys these bodies use: every inspector either
# returns its facts or raises BadRequest (a 400); anything else would be a 500.
_KEYS = ["model", "messages", "role", "content", "type", "text", "image_url", "url", "source",
         "media_type", "data", "tool_calls", "function", "name", "arguments", "tools", "input",
         "prompt", "stream", "max_tokens", "max_output_tokens", "system", "instructions",
         "tool_choice", "call_id", "output", "refusal", "detail", "parameters"]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats(allow_nan=False)
    | st.sampled_from(["", "user", "assistant", "text", "image_url", "input_text", "message",
                       "data:image/png;base64,iVBORw0KGgo=", "a@b.example", "m"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner,
                                                               max_size=4),
    max_leaves=16)


_ITEMS = st.lists(st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=5), min_size=1,
                  max_size=3)  # messages or input items: objects of any shape


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=5), _ITEMS)
def test_any_json_object_is_inspected_or_refused_with_a_bad_request(body: dict,
                                                                     items: list) -> None:
    body = {**body, "messages": items, "input": items}
    for inspect in (inspect_chat, inspect_completion, inspect_embeddings, inspect_count_tokens,
                    lambda b: inspect_chat(responses_to_chat(b)),
                    lambda b: inspect_chat(messages_to_chat(b))):
        try:
            inspect(body)
        except BadRequest:
            pass
