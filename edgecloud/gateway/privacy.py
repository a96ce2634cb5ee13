"""Personal-data detection for the placement policy: pure, cheap on text without candidates.

One combined regular expression finds candidates (in Chinese and English text alike: only ASCII
letters and digits count as word neighbours, since CJK characters are \\w to `re`), then the
well-kept validators decide: python-stdnum for ID-card checksums, Luhn and IBAN, phonenumbers for
phone numbers, `ipaddress` for IP addresses. A false positive keeps a request on the edge, which
is the safe side; validators keep that rare.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence

import phonenumbers
from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.cn import ric as _cn_ric

_NOT_ALNUM_BEFORE = r"(?<![0-9A-Za-z])"
_NOT_ALNUM_AFTER = r"(?![0-9A-Za-z])"

# Cheap gates first (plain substring checks, one ASCII regex), full patterns only behind them.
_DIGIT_RUN = re.compile(r"[0-9][0-9 ().:-]{5,}", re.ASCII)

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", re.ASCII)
_IPV6 = re.compile(
    r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])", re.ASCII
)
_DIGITISH = re.compile(
    # IPv4 dotted quad
    r"(?P<ipv4>(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9]))"
    # IBAN: country, check digits, 11 to 30 more letters/digits, optionally grouped by 4
    r"|(?P<iban>" + _NOT_ALNUM_BEFORE + r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}"
    + _NOT_ALNUM_AFTER + ")"
    # digit runs with optional separators: phones, ID cards, bank cards
    r"|(?P<num>" + _NOT_ALNUM_BEFORE + r"(?:\+|00)?\(?[0-9][0-9 ().-]{5,24}[0-9Xx]"
    + _NOT_ALNUM_AFTER + ")",
    re.ASCII,
)
_IPV4_INSIDE = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9])",
                          re.ASCII)
_SECRET = re.compile(
    r"(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
    r"|(?i:api[_-]?key|secret|passw(?:or)?d|access[_-]?token|密码|口令)\s*[:=：]\s*[^\s,;，；]{6,}"
)

_SEPARATORS = str.maketrans("", "", " -().+")


def _valid_cn_mobile(digits: str) -> bool:
    if len(digits) != 11 or digits[0] != "1" or digits[1] not in "3456789":
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(digits, "CN"))
    except phonenumbers.NumberParseException:
        return False


def _valid_phone(raw: str, digits: str) -> bool:
    """A phone number in international form, a CN mobile, or a formatted NANP/EU number."""
    if _valid_cn_mobile(digits[-11:] if digits.startswith("86") else digits):
        return True
    raw = raw.strip()
    try:
        if raw.startswith(("+", "00")):
            number = phonenumbers.parse("+" + raw.lstrip("+0") if raw.startswith("00") else raw)
            return phonenumbers.is_valid_number(number)
        # Bare digit runs are too often order numbers; only formatted ones count as phones.
        if any(c in raw for c in " -()") and 10 <= len(digits) <= 11:
            for region in ("US", "GB", "DE", "FR"):
                if phonenumbers.is_valid_number(phonenumbers.parse(raw, region)):
                    return True
    except phonenumbers.NumberParseException:
        return False
    return False


def _classify_number(raw: str) -> str | None:
    compact = raw.translate(_SEPARATORS)
    digits = compact.rstrip("Xx")
    if not digits.isdigit():
        return None
    if len(compact) == 18 and _cn_ric.is_valid(compact.upper()):
        return "id_card"
    if 13 <= len(compact) <= 19 and compact.isdigit() and _luhn.is_valid(compact):
        return "bank_card"
    if compact.isdigit() and _valid_phone(raw, compact):
        return "phone"
    return None


class PrivacyDetector:
    """Finds the first kind of personal data in a set of texts (or None)."""

    def __init__(self, kinds: Iterable[str], patterns: Mapping[str, str] | None = None) -> None:
        self.kinds = frozenset(kinds)
        self.extra = [(name, re.compile(p)) for name, p in (patterns or {}).items()]

    def detect(self, texts: Sequence[str]) -> str | None:
        """The detected kind (e.g. `email`, or a custom pattern's name), else None."""
        for text in texts:
            kind = self._detect_one(text)
            if kind is not None:
                return kind
        return None

    def _detect_one(self, text: str) -> str | None:
        kinds = self.kinds
        for name, pattern in self.extra:
            if pattern.search(text):
                return name
        if "email" in kinds and "@" in text and _EMAIL.search(text):
            return "email"
        if _DIGIT_RUN.search(text):
            kind = self._digitish(text)
            if kind is not None:
                return kind
        if "ip" in kinds and ("::" in text or text.count(":") >= 2):
            for m in _IPV6.finditer(text):
                if _valid_ip(m.group()):
                    return "ip"
        if "secret" in kinds and _maybe_secret(text) and _SECRET.search(text):
            return "secret"
        return None

    def _digitish(self, text: str) -> str | None:
        kinds = self.kinds
        for m in _DIGITISH.finditer(text):
            group = m.lastgroup
            value = m.group()
            if group == "num":
                kind = _classify_number(value)
                if kind is None and " " in value:
                    kind = _classify_groups(value.split(), kinds)
                if kind in kinds:
                    return kind
                if "ip" in kinds and value.count(".") >= 3 and _ipv4_inside(value):
                    return "ip"
            elif group == "ipv4":
                if "ip" in kinds and _valid_ip(value):
                    return "ip"
            elif group == "iban" and "iban" in kinds and _valid_iban(value):
                return "iban"
        return None


    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Every detected value as (start, end, kind), sorted; finds of different detectors may
        overlap.

        The slower sibling of detect(), for rewriting a text: the same candidates and validators,
        but all of them, with their places. detect() run on the rewritten text is the check that
        nothing was missed."""
        kinds = self.kinds
        found: list[tuple[int, int, str]] = []
        for name, pattern in self.extra:
            found += ((m.start(), m.end(), name) for m in pattern.finditer(text)
                      if m.end() > m.start())
        if "email" in kinds and "@" in text:
            found += ((m.start(), m.end(), "email") for m in _EMAIL.finditer(text))
        if _DIGIT_RUN.search(text):
            found += self._digitish_spans(text)
        if "ip" in kinds and ("::" in text or text.count(":") >= 2):
            found += ((m.start(), m.end(), "ip") for m in _IPV6.finditer(text)
                      if _valid_ip(m.group()))
        if "secret" in kinds and _maybe_secret(text):
            found += ((m.start(), m.end(), "secret") for m in _SECRET.finditer(text))
        found.sort()
        return found

    def _digitish_spans(self, text: str) -> list[tuple[int, int, str]]:
        kinds = self.kinds
        out: list[tuple[int, int, str]] = []
        for m in _DIGITISH.finditer(text):
            group = m.lastgroup
            value = m.group()
            start = m.start()
            if group == "num":
                kind = _classify_number(value)
                if kind is not None and kind in kinds:
                    out.append((start, m.end(), kind))
                elif " " in value:
                    out += _group_spans(value, start, kinds)
                if "ip" in kinds and value.count(".") >= 3:
                    out += ((start + a, start + b, "ip") for a, b in _ipv4_inside(value))
            elif group == "ipv4":
                if "ip" in kinds and _valid_ip(value):
                    out.append((start, m.end(), "ip"))
            elif group == "iban" and "iban" in kinds:
                n = _iban_length(value)
                if n:
                    out.append((start, start + n, "iban"))
        return out


def _maybe_secret(text: str) -> bool:
    """The cheap gate before the secret patterns: one of their fixed pieces occurs."""
    low = text.lower()
    # An unrolled chain of substring checks: ~1 us, where any() or a regex costs 3-20.
    return (
        "key" in low or "secret" in low or "passw" in low or "token" in low
        or "k-" in low or "akia" in low or "gh" in low or "xox" in low or "aiza" in low
        or "-----" in low or "eyj" in low or "密码" in low or "口令" in low
    )


def _ipv4_inside(value: str) -> list[tuple[int, int]]:
    """IPv4 addresses that a digit-run candidate swallowed ("(10.0.0.1", "138... 10.0.0.1")."""
    return [m.span() for m in _IPV4_INSIDE.finditer(value) if _valid_ip(m.group())]


def _group_spans(value: str, offset: int, kinds: frozenset[str]) -> list[tuple[int, int, str]]:
    """The values inside a space-separated run that failed as a whole, left to right, each the
    longest run of consecutive groups that validates (see _classify_groups)."""
    groups = [(m.start(), m.end()) for m in re.finditer(r"\S+", value)]
    out: list[tuple[int, int, str]] = []
    i, n = 0, len(groups)
    while i < n:
        for j in range(n - 1, i - 1, -1):
            piece = value[groups[i][0] : groups[j][1]]
            if len(piece) - piece.count(" ") < 7:
                continue
            kind = _classify_number(piece)
            if kind is not None and kind in kinds:
                out.append((offset + groups[i][0], offset + groups[j][1], kind))
                i = j
                break
        i += 1
    return out


def _iban_length(value: str) -> int:
    """The length of the valid IBAN at the start of `value` (0 if none), as _valid_iban."""
    groups = value.split(" ")
    for n in range(len(groups), 0, -1):
        candidate = "".join(groups[:n])
        if len(candidate) < 15:
            return 0
        if _iban.is_valid(candidate):
            return len(" ".join(groups[:n]))
    return 0


def _classify_groups(groups: list[str], kinds: frozenset[str]) -> str | None:
    """A run like "4111 1111 1111 1111 2" or "13812345678 11010519491231002X": try the runs of
    consecutive groups, longest first (only reached for candidates that failed as a whole)."""
    n = len(groups)
    for length in range(n - 1, 0, -1):
        for start in range(0, n - length + 1):
            piece = " ".join(groups[start : start + length])
            if len(piece) - piece.count(" ") < 7:
                continue
            kind = _classify_number(piece)
            if kind in kinds:
                return kind
    return None


def _valid_iban(value: str) -> bool:
    # The pattern is greedy across spaces ("DE89 3704 ... 00 IBAN DE89"): try shorter prefixes.
    return _iban_length(value) > 0


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
