"""Hypothesis strategies for personal data of every kind inside Chinese and English text.

Shared by the pseudonymisation tests (core and through a real gateway). Identifiers are valid
(checksums, real number plans) and stand apart from their neighbours as they do in real text:
a space, CJK text or punctuation between them. The filler text holds no digits, `@`, `:` or
`=`, so it never holds personal data of its own; it does hold brackets, quotes, backslashes,
newlines, emoji and surrogate-looking tokens, which the way back must keep exactly.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st
from stdnum import iban, luhn
from stdnum.cn import ric

from edgecloud.gateway.config import PII_KINDS
from edgecloud.gateway.privacy import PrivacyDetector

DIGITS = "0123456789"
SEPARATORS = re.compile(r"[\s().+-]")


@st.composite
def email(draw: st.DrawFn) -> str:
    user = draw(st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10))
    extra = draw(st.sampled_from(["", ".x", "+tag", "_1", "99"]))
    domain = draw(st.sampled_from(["example.com", "corp.example.org", "qq.com", "163.com",
                                   "mail.example.cn"]))
    return f"{user}{extra}@{domain}"


@st.composite
def phone(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["138", "139", "150", "186", "177", "135"]))
    rest = draw(st.text(DIGITS, min_size=8, max_size=8))
    number = prefix + rest
    style = draw(st.integers(0, 3))
    if style == 1:
        return f"+86 {number[:3]} {number[3:7]} {number[7:]}"
    if style == 2:
        return f"+86-{number[:3]}-{number[3:7]}-{number[7:]}"
    if style == 3:
        return draw(st.sampled_from(["+1 415-555-2671", "+44 20 7946 0958", "+49 30 901820"]))
    return number


@st.composite
def id_card(draw: st.DrawFn) -> str:
    area = draw(st.sampled_from(["110105", "310104", "440305", "510107"]))
    year = draw(st.integers(1950, 2005))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 28))
    seq = draw(st.integers(0, 999))
    body = f"{area}{year}{month:02d}{day:02d}{seq:03d}"
    return body + ric.calc_check_digit(body + "0")


@st.composite
def bank_card(draw: st.DrawFn) -> str:
    first = draw(st.sampled_from(["4", "5", "62"]))
    length = draw(st.sampled_from([16, 19])) if first == "62" else 16
    digits = first + draw(st.text(DIGITS, min_size=length - len(first) - 1,
                                  max_size=length - len(first) - 1))
    card = digits + luhn.calc_check_digit(digits)
    if length == 16 and draw(st.booleans()):
        return " ".join(card[i : i + 4] for i in range(0, 16, 4))
    return card


@st.composite
def iban_number(draw: st.DrawFn) -> str:
    country, bban = draw(st.sampled_from([
        ("DE", 18), ("GB", 0), ("FR", 0), ("NL", 0),
    ]))
    if country == "DE":
        rest = draw(st.text(DIGITS, min_size=bban, max_size=bban))
    elif country == "GB":
        rest = "WEST" + draw(st.text(DIGITS, min_size=14, max_size=14))
    elif country == "FR":
        rest = draw(st.text(DIGITS, min_size=10, max_size=10)) + "0" * 11
        rest = rest[:21]
    else:
        rest = "ABNA" + draw(st.text(DIGITS, min_size=10, max_size=10))
    number = country + iban.calc_check_digits(country + "00" + rest) + rest
    if not iban.is_valid(number):
        number = "DE89370400440532013000"
    if draw(st.booleans()):
        return " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return number


@st.composite
def ip(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        parts = [draw(st.integers(1, 223))] + [draw(st.integers(0, 255)) for _ in range(3)]
        return ".".join(map(str, parts))
    groups = [f"{draw(st.integers(0, 0xFFFF)):x}" for _ in range(8)]
    if draw(st.booleans()):
        return "fe80::" + ":".join(groups[:3])
    return ":".join(groups)


_DETECT = PrivacyDetector(PII_KINDS)


def _detected_as(kind: str, strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # Only values the detector recognises on their own: the others are not personal data to it.
    return strategy.filter(lambda v: _DETECT.detect([v]) == kind)


KINDS = {name: _detected_as(name, s) for name, s in (
    ("email", email()), ("phone", phone()), ("id_card", id_card()),
    ("bank_card", bank_card()), ("iban", iban_number()), ("ip", ip()))}

WORDS = ["hello", "please", "send", "the", "report", "to", "my", "friend", "call", "card",
         "number", "is", "and", "or", "tomorrow", "meeting", "EMAIL", "PHONE", "IBAN", "x",
         "你好", "请", "帮我", "发送", "给", "明天", "的", "邮箱", "电话", "是", "卡号", "身份证",
         "地址", "服务器", "谢谢", "会议", "转账", "和"]
ODD = ["[", "]", "[EMAIL_1]", "[PHONE_", "[IP_1", "\"", "\\", "\n", "\t", "😀", "é", "[x]",
       "[EMAIL_1", "EMAIL_1]", "\\u005b", "{", "}", "/", "?", "!", "'"]
GAPS = [" ", "，", "。", "、", "\n", " (", ") ", "！", "? "]


@st.composite
def filler(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(ODD)),
                           max_size=8))
    return " ".join(pieces)


@st.composite
def text_with_pii(draw: st.DrawFn) -> tuple[str, list[str]]:
    """(text, the identifiers placed in it); every kind appears across examples, and the same
    identifier may appear twice in one text."""
    values: list[str] = []
    out = [draw(filler())]
    for _ in range(draw(st.integers(1, 4))):
        if values and draw(st.integers(0, 4)) == 0:
            value = draw(st.sampled_from(values))  # the same value again
        else:
            value = draw(st.one_of(*KINDS.values()))
        values.append(value)
        out += [draw(st.sampled_from(GAPS)), value, draw(st.sampled_from(GAPS)),
                draw(filler())]
    return "".join(out), values


def compact(text: str) -> str:
    """Text without separators (spaces, dashes, dots, brackets, plus): the test that a value
    did not reach the cloud even in pieces."""
    return SEPARATORS.sub("", text).replace(".", "").replace(":", "")
