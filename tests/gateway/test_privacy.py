"""Personal-data detection in Chinese and English text, with validators on the candidates."""

from __future__ import annotations

import pytest

from edgecloud.gateway.config import PII_KINDS
from edgecloud.gateway.privacy import PrivacyDetector

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
