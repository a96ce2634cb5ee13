"""The pseudonymisation core: replace, re-scan, restore (plain and streamed), as pure functions."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud.gateway.config import PII_KINDS
from edgecloud.gateway.errors import NoAllowedEndpoint
from edgecloud.gateway.privacy import PrivacyDetector
from edgecloud.gateway.pseudonymize import Pseudonymizer, Surrogates, restore_answer
from edgecloud.gateway.restore_stream import StreamRestorer
from tests.gateway.pii_samples import compact, text_with_pii

LISTED = ["email", "phone", "id_card", "bank_card", "iban", "ip"]
PSEUDO = Pseudonymizer(PrivacyDetector(PII_KINDS), LISTED)


def _chat(*texts: str) -> dict[str, Any]:
    roles = ["system", "user", "assistant", "user"]
    return {"model": "gpt-4o-mini", "messages": [
        {"role": roles[i % 4], "content": t} for i, t in enumerate(texts)]}


def _texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"]]


# -- replace ----------------------------------------------------------------------------------

def test_each_kind_is_replaced_by_a_consistent_token() -> None:
    body = _chat("mail bob@example.com or call 13812345678, card 4111 1111 1111 1111",
                 "身份证 11010519491231002X，IBAN DE89 3704 0044 0532 0130 00，服务器 10.1.2.3",
                 "again: bob@example.com and fe80::1ff:fe23:4567:890a")
    rw = PSEUDO.rewrite(body)
    assert rw is not None
    t = _texts(rw.body)
    assert t[0] == "mail [EMAIL_1] or call [PHONE_1], card [BANK_CARD_1]"
    assert t[1] == "身份证 [ID_CARD_1]，IBAN [IBAN_1]，服务器 [IP_1]"
    assert t[2] == "again: [EMAIL_1] and [IP_2]"  # the same value, the same surrogate
    assert rw.surrogates.kinds == ("bank_card", "email", "iban", "id_card", "ip", "phone")
    assert rw.body["model"] == "gpt-4o-mini"
    assert orjson.loads(rw.raw) == rw.body
    for value in ("bob@example.com", "13812345678", "4111", "11010519491231002X", "DE89"):
        assert value.encode() not in rw.raw


def test_restore_gives_back_every_original_and_leaves_altered_tokens() -> None:
    body = _chat("a@example.com and b@example.com, 13812345678")
    rw = PSEUDO.rewrite(body)
    assert rw is not None
    s = rw.surrogates
    assert s.restore("[EMAIL_2] then [EMAIL_1]; [PHONE_1]") == (
        "b@example.com then a@example.com; 13812345678")
    assert s.restore("[EMAIL_3] [email_1] [EMAIL_1 ] EMAIL_1") == (
        "[EMAIL_3] [email_1] [EMAIL_1 ] EMAIL_1")


def test_surrogates_never_collide_with_the_requests_own_text() -> None:
    body = _chat("The template says [EMAIL_1] and [PHONE_1]; mine is c@example.com")
    rw = PSEUDO.rewrite(body)
    assert rw is not None
    assert _texts(rw.body)[0] == (
        "The template says [EMAIL_1] and [PHONE_1]; mine is [EMAIL_2]")
    # The model echoes both: the literal token stays, the surrogate comes back.
    assert rw.surrogates.restore(_texts(rw.body)[0]) == _texts(body)[0]


def test_every_text_part_is_rewritten_images_and_model_are_not() -> None:
    image = "data:image/png;base64," + "A" * 64
    body = {"model": "m", "user": "bob@example.com", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "卡号 6222021234567890128"},
                                     {"type": "image_url", "image_url": {"url": image}}]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "send", "arguments": '{"to": "bob@example.com"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sent to bob@example.com"}]}
    rw = PSEUDO.rewrite(body)
    assert rw is not None
    m = rw.body["messages"]
    assert m[0]["content"][0]["text"] == "卡号 [BANK_CARD_1]"
    assert m[0]["content"][1]["image_url"]["url"] == image
    assert m[1]["tool_calls"][0]["function"]["arguments"] == '{"to": "[EMAIL_1]"}'
    assert m[2]["content"] == "sent to [EMAIL_1]"
    assert rw.body["user"] == "[EMAIL_1]"


def test_completion_prompts_are_rewritten() -> None:
    prompts = ["IP 192.168.1.20", "no data", "call 13812345678"]
    rw = PSEUDO.rewrite({"model": "m", "prompt": prompts})
    assert rw is not None
    assert rw.body["prompt"] == ["IP [IP_1]", "no data", "call [PHONE_1]"]


@pytest.mark.parametrize("text", [
    "mail bob@example.com, api_key = abcdefghijklmnop",
    "call 13812345678 with sk-proj-abcdefghijklmnopqrstuvwxyz123",
    "密码：hunter2hunter2 邮箱 a@b.cn",
])
def test_a_secret_keeps_the_request_private(text: str) -> None:
    assert PSEUDO.rewrite(_chat(text)) is None


def test_custom_patterns_leave_only_when_listed() -> None:
    detector = PrivacyDetector(PII_KINDS, {"employee_id": r"EMP-[0-9]{6}"})
    body = _chat("EMP-123456 wrote to bob@example.com")
    assert Pseudonymizer(detector, LISTED).rewrite(body) is None
    rw = Pseudonymizer(detector, [*LISTED, "employee_id"]).rewrite(body)
    assert rw is not None
    assert _texts(rw.body)[0] == "[EMPLOYEE_ID_1] wrote to [EMAIL_1]"


def test_a_value_left_after_rewriting_is_refused_naming_the_rule() -> None:
    # A custom detector that matches the surrogates themselves: the re-scan finds them.
    detector = PrivacyDetector(PII_KINDS, {"token": r"\[EMAIL_[0-9]+\]"})
    with pytest.raises(NoAllowedEndpoint) as err:
        Pseudonymizer(detector, LISTED).rewrite(_chat("bob@example.com"))
    assert err.value.rule == "privacy.pii.token"
    assert err.value.status == 503


def test_values_hidden_in_longer_digit_runs_are_found_too() -> None:
    # The digit-run candidate swallows the IPv4 address; the card is cut by its length cap.
    body = _chat("13812345678 10.0.0.1", "13812345678 4111 1111 1111 1111")
    rw = PSEUDO.rewrite(body)
    assert rw is not None
    assert _texts(rw.body) == ["[PHONE_1] [IP_1]", "[PHONE_1] [BANK_CARD_1]"]


def test_the_mapping_never_shows_in_a_repr() -> None:
    rw = PSEUDO.rewrite(_chat("bob@example.com"))
    assert rw is not None
    assert "bob" not in repr(rw) and "bob" not in repr(rw.surrogates)


# -- restore: whole answers ------------------------------------------------------------------

def test_restore_answer_in_content_tool_calls_and_text() -> None:
    s = Surrogates({"[EMAIL_1]": 'a"b@example.com', "[PHONE_1]": "13812345678"}, ["email"])
    answer = {"id": "x", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "to [EMAIL_1]", "tool_calls": [
            {"id": "c", "type": "function",
             "function": {"name": "f", "arguments": '{"p": "[PHONE_1]"}'}}]}},
        {"index": 1, "text": "[PHONE_1]!"}], "usage": {"completion_tokens": 3}}
    out = orjson.loads(restore_answer(json.dumps(answer).encode(), s))
    assert out["choices"][0]["message"]["content"] == 'to a"b@example.com'
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == (
        '{"p": "13812345678"}')
    assert out["choices"][1]["text"] == "13812345678!"
    assert restore_answer(b"not json [", s) == b"not json ["


# -- restore: streams ------------------------------------------------------------------------

def _chat_events(pieces: list[str], field: str = "content") -> list[bytes]:
    out = []
    for p in pieces:
        if field == "content":
            choice: dict[str, Any] = {"index": 0, "delta": {"content": p}, "finish_reason": None}
        elif field == "arguments":
            choice = {"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": p}}]}, "finish_reason": None}
        else:
            choice = {"index": 0, "text": p, "finish_reason": None}
        out.append(b"data: " + json.dumps({"id": "s", "object": "o", "choices": [choice]}
                                          ).encode() + b"\n\n")
    return out


def _read_stream(data: bytes) -> tuple[str, int]:
    """(the text a client assembles, the number of events with a choice)."""
    text = []
    n = 0
    for event in data.split(b"\n\n"):
        if not event.startswith(b"data: {"):
            continue
        obj = json.loads(event[6:])
        for c in obj["choices"]:
            n += 1
            if "text" in c:
                text.append(c["text"] or "")
            delta = c.get("delta") or {}
            text.append(delta.get("content") or "")
            for call in delta.get("tool_calls") or []:
                text.append(call.get("function", {}).get("arguments") or "")
    return "".join(text), n


def _run(restorer: StreamRestorer, chunks: list[bytes]) -> bytes:
    return b"".join(restorer.feed(c) for c in chunks) + restorer.end()


SURR = Surrogates({"[EMAIL_1]": "bob@example.com", "[BANK_CARD_1]": "4111 1111 1111 1111"},
                  ["email", "bank_card"])


@pytest.mark.parametrize("field", ["content", "arguments", "text"])
def test_a_surrogate_split_at_every_point_comes_back_whole(field: str) -> None:
    answer = "send [BANK_CARD_1] to [EMAIL_1]."
    expected = "send 4111 1111 1111 1111 to bob@example.com."
    for size in range(1, 8):
        pieces = [answer[i : i + size] for i in range(0, len(answer), size)]
        events = _chat_events(pieces, field) + [b"data: [DONE]\n\n"]
        out = _run(StreamRestorer(SURR), events)
        text, n = _read_stream(out)
        assert text == expected
        assert n == len(pieces)  # every event still sent, none merged
        assert out.endswith(b"data: [DONE]\n\n")


def test_only_a_possible_start_of_a_surrogate_is_held_back() -> None:
    r = StreamRestorer(SURR)
    out = r.feed(_chat_events(["hello [EMA"])[0])
    assert _read_stream(out)[0] == "hello "
    out = r.feed(_chat_events(["IL_1] and [x"])[0])
    assert _read_stream(out)[0] == "bob@example.com and [x"
    out = r.feed(_chat_events(["[EMAIL_1"])[0])
    assert _read_stream(out)[0] == ""
    out = r.feed(_chat_events(["2] ok"])[0])  # altered by the model: left as it is
    assert _read_stream(out)[0] == "[EMAIL_12] ok"


def test_held_back_text_goes_out_with_the_finish_or_before_done() -> None:
    finish = (b'data: {"id":"s","object":"o","choices":[{"index":0,"delta":{},'
              b'"finish_reason":"length"}]}\n\n')
    out = _run(StreamRestorer(SURR), _chat_events(["cut at [BANK_CA"]) + [finish])
    assert _read_stream(out)[0] == "cut at [BANK_CA"
    assert b'"finish_reason":"length"' in out
    out = _run(StreamRestorer(SURR), _chat_events(["cut at [EMAIL"]) + [b"data: [DONE]\n\n"])
    assert _read_stream(out)[0] == "cut at [EMAIL"
    assert out.endswith(b"data: [DONE]\n\n")
    out = _run(StreamRestorer(SURR), _chat_events(["no done [EM"]))
    assert _read_stream(out)[0] == "no done [EM"


def test_events_split_anywhere_and_json_escapes() -> None:
    answer = "邮箱 [EMAIL_1] 卡 [BANK_CARD_1]"
    events = []
    for i in range(0, len(answer), 3):
        chunk = {"id": "s", "choices": [{"index": 0, "delta": {"content": answer[i : i + 3]}}]}
        events.append(b"data: " + json.dumps(chunk, ensure_ascii=True).encode() + b"\r\n\r\n")
    events.append(b": keep-alive\r\n\r\ndata: [DONE]\r\n\r\n")
    raw = b"".join(events)
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(raw)), 12))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        out = _run(StreamRestorer(SURR), chunks)
        assert _read_stream(out)[0] == "邮箱 bob@example.com 卡 4111 1111 1111 1111"
        assert out.endswith(b"data: [DONE]\n\n")


def test_a_stream_without_surrogate_text_passes_byte_for_byte() -> None:
    events = b"".join(_chat_events(["plain ", "text ", "only"])) + b"data: [DONE]\n\n"
    assert _run(StreamRestorer(SURR), [events[:10], events[10:]]) == events


def test_error_events_and_usage_pass() -> None:
    err = b'data: {"error": {"message": "[EMAIL_1] broke"}}\n\n'
    usage = b'data: {"id":"s","choices":[],"usage":{"completion_tokens":2}}\n\n'
    assert _run(StreamRestorer(SURR), [err, usage]) == err.replace(
        b"[EMAIL_1]", b"bob@example.com") + usage
    escaped = b'data: {"error": {"message": "\\u005bEMAIL_1] broke"}}\n\n'
    assert _run(StreamRestorer(SURR), [escaped]) == escaped  # decoded only within choices


def _split(seq: Any, rng: random.Random, most: int) -> list[Any]:
    """`seq` in consecutive pieces of 1 to `most` items."""
    out = []
    i = 0
    while i < len(seq):
        n = rng.randint(1, most)
        out.append(seq[i : i + n])
        i += n
    return out


# -- the round trip, as a property -----------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(text_with_pii(), min_size=1, max_size=3), st.randoms(use_true_random=False),
       st.sampled_from(["content", "arguments", "text"]))
def test_round_trip_through_an_echo(samples: list[tuple[str, list[str]]], rng: random.Random,
                                    field: str) -> None:
    texts = [t for t, _ in samples]
    values = [v for _, vs in samples for v in vs]
    rw = PSEUDO.rewrite(_chat(*texts))
    assert rw is not None
    sent = "\n".join(_texts(rw.body))
    for v in values:  # no value reaches the cloud, not even without its separators
        assert v not in sent and compact(v) not in compact(sent), v
    original = "\n".join(texts)
    # Plain answer.
    answer = {"choices": [{"index": 0, "message": {"content": sent}}]}
    out = orjson.loads(restore_answer(orjson.dumps(answer), rw.surrogates))
    assert out["choices"][0]["message"]["content"] == original
    # Streamed, 1 to 7 characters an event, events cut at random bytes.
    pieces = _split(sent, rng, 7)
    raw = b"".join(_chat_events(pieces, field)) + b"data: [DONE]\n\n"
    chunks = _split(raw, rng, 300)
    text, n_events = _read_stream(_run(StreamRestorer(rw.surrogates), chunks))
    assert text == original
    assert n_events >= len(pieces)
