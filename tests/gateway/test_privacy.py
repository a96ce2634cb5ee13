"""Personal-data detection in Chinese and English text, with validators on the candidates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.gateway.config import PII_KINDS
from edgecloud.gateway.privacy import PrivacyDetector
from tests.gateway.pii_samples import text_with_pii

DETECT = PrivacyDetector(PII_KINDS)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("我的手机号是13812345678", "phone"),
        ("电话 138 1234 5678，谢谢", "phone"),
        ("call me on +86 139-1234-5678 tomorrow", "phone"),
        ("Call +1 415-555-2671 after five", "phone"),
        ("US office: (415) 555-2671", "phone"),
        ("身份证 11010519491231002X", "id_card"),
        ("my ID is 110105194912310029, ok?", None),  # checksum fails: not an ID card
        ("身份证号码：11010519491231002x。", "id_card"),
        ("mail me: bob.smith+x@example.co.uk", "email"),
        ("邮箱是bob@example.cn谢谢", "email"),
        ("card 4111 1111 1111 1111 exp 12/29", "bank_card"),
        ("卡号6222021234567890128", "bank_card"),
        ("卡号 6222021234567890121", None),  # Luhn fails
        ("卡号 4111111111111111", "bank_card"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "iban"),
        ("iban GB82WEST12345698765432", "iban"),
        ("the server 192.168.1.20 is down", "ip"),
        ("fe80::1ff:fe23:4567:890a is the link-local address", "ip"),
        ("api_key = abcdefghijklmnop", "secret"),
        ("use sk-proj-abcdefghijklmnopqrstuvwxyz123", "secret"),
        ("AKIAIOSFODNN7EXAMPLE", "secret"),
        ("密码：hunter2hunter2", "secret"),
    ],
)
def test_detects_personal_data(text: str, kind: str | None) -> None:
    assert DETECT.detect([text]) == kind


@pytest.mark.parametrize(
    "text",
    [
        "Tell me about the year 2024 and pi = 3.14159.",
        "Version 1.2.3 was released; order 12345678 shipped.",
        "会议时间 12:30:45，地点三楼。",
        "I have 2 cats and 10,000 dollars",
        "What is 1234567890123 divided by 7?",
        "你好，请帮我打开微信，给张三发一条消息：明天下午三点开会。",
        "Please open Settings and tap Wi-Fi.",
    ],
)
def test_ordinary_text_is_public(text: str) -> None:
    assert DETECT.detect([text]) is None


def test_only_configured_kinds_count() -> None:
    only_email = PrivacyDetector(["email"])
    assert only_email.detect(["我的手机号是13812345678"]) is None
    assert only_email.detect(["a@b.io"]) == "email"


def test_custom_patterns_name_their_rule() -> None:
    det = PrivacyDetector([], {"employee_id": r"EMP-\d{6}"})
    assert det.detect(["ticket for EMP-123456"]) == "employee_id"
    assert det.detect(["nothing here"]) is None


def test_any_text_of_many_counts() -> None:
    assert DETECT.detect(["hello", "world", "邮箱 a@b.io"]) == "email"


def test_an_ipv4_address_inside_a_digit_run_candidate_is_found() -> None:
    assert DETECT.detect(["see (10.1.2.3 )"]) == "ip"
    assert DETECT.spans("see (10.1.2.3 )") == [(5, 13, "ip")]
    assert DETECT.spans("13812345678 10.0.0.1") == [(0, 11, "phone"), (12, 20, "ip")]


# detect() is the first find of the walk that spans() runs to its end: the two never disagree.

def _agree(detector: PrivacyDetector, text: str) -> None:
    kind = detector.detect([text])
    finds = detector.spans(text)
    assert (kind is None) == (finds == []), (text, kind, finds)
    assert kind is None or kind in {k for _, _, k in finds}


def test_a_grouped_run_is_split_when_the_whole_is_a_kind_not_detected() -> None:
    # As a whole "13812345678 1234 4" passes Luhn (a card number, not looked for here); its
    # first group is a phone number, which is.
    text = "call 13812345678 1234 4 now"
    phones = PrivacyDetector(["phone"])
    assert phones.spans(text) == [(5, 16, "phone")]
    assert phones.detect([text]) == "phone"
    assert DETECT.detect([text]) == "bank_card"
    _agree(phones, text)
    _agree(DETECT, text)


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1111 2 exp", "13812345678 11010519491231002X",
    "IBAN DE89 3704 0044 0532 0130 00 IBAN DE89", "see (10.1.2.3 ) and 138 1234 5678",
    "2 a@b.io 5678 1111 12 555-2671", "0532 00 1234 0532 6222021234567890128",
])
@pytest.mark.parametrize("kinds", [PII_KINDS, ["phone"], ["bank_card"], ["id_card"], ["ip"]])
def test_detect_and_spans_agree(text: str, kinds: list[str]) -> None:
    _agree(PrivacyDetector(kinds), text)


@settings(max_examples=200, deadline=None)
@given(sample=text_with_pii(), kinds=st.sets(st.sampled_from(PII_KINDS)))
def test_detect_and_spans_agree_on_generated_text(sample: tuple[str, list[str]],
                                                  kinds: set[str]) -> None:
    _agree(PrivacyDetector(kinds), sample[0])


def test_an_id_shaped_number_the_place_table_cannot_answer_for_is_an_id_card() -> None:
    # python-stdnum raises KeyError for this prefecture code instead of answering; the checksum
    # and birth date hold, so the detector fails closed instead of failing the request.
    assert DETECT.detect(["id 41111111111111112X"]) == "id_card"
    assert DETECT.spans("id 41111111111111112X") == [(3, 21, "id_card")]


def test_a_custom_pattern_matching_the_empty_string_finds_only_what_it_matches() -> None:
    det = PrivacyDetector([], {"digits": r"[0-9]*"})
    assert det.detect(["no numbers here"]) is None
    assert det.spans("no numbers here") == []
    assert det.detect(["room 42"]) == "digits"
    assert det.spans("room 42") == [(5, 7, "digits")]
