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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

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

Find = tuple[int, int, str]
"""A detected value: (start, end, kind) in its text."""


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


def _valid_cn_id(compact: str) -> bool:
    try:
        return _cn_ric.is_valid(compact)
    except KeyError:
        # python-stdnum's place table lacks the county of some prefecture codes (411100...) and
        # raises instead of answering; the checksum and birth date held by then: fail closed.
        return True


def _classify_number(raw: str) -> str | None:
    compact = raw.translate(_SEPARATORS)
    digits = compact.rstrip("Xx")
    if not digits.isdigit():
        return None
    if len(compact) == 18 and _valid_cn_id(compact.upper()):
        return "id_card"
    if 13 <= len(compact) <= 19 and compact.isdigit() and _luhn.is_valid(compact):
        return "bank_card"
    if compact.isdigit() and _valid_phone(raw, compact):
        return "phone"
    return None


class PrivacyDetector:
    """Finds personal data in texts: the first kind (detect) or every place (spans)."""

    def __init__(self, kinds: Iterable[str], patterns: Mapping[str, str] | None = None) -> None:
        self.kinds = frozenset(kinds)
        self.extra = [(name, re.compile(p)) for name, p in (patterns or {}).items()]

    def detect(self, texts: Sequence[str]) -> str | None:
        """The detected kind (e.g. `email`, or a custom pattern's name), else None: the kind of
        the first find of the walk that spans() runs to its end."""
        found: list[Find] = []
        for text in texts:
            if self._walk(text, found, True):
                return found[0][2]
        return None

    def spans(self, text: str) -> list[Find]:
        """Every detected value as (start, end, kind), sorted; finds of different detectors may
        overlap. detect() run on a text rewritten from these is the check that nothing was
        missed."""
        found: list[Find] = []
        self._walk(text, found, False)
        found.sort()
        return found

    def _walk(self, text: str, found: list[Find], first: bool) -> bool:
        """The one walk over a text: custom patterns, e-mail, digit runs, IPv6, secrets, each
        behind its cheap gate, appending finds to `found`. With `first` it stops at the first
        find and says so (True)."""
        kinds = self.kinds
        for name, pattern in self.extra:
            if _add(found, pattern, text, name, first):
                return True
        if "email" in kinds and "@" in text and _add(found, _EMAIL, text, "email", first):
            return True
        if _DIGIT_RUN.search(text) and self._digitish(text, found, first):
            return True
        if ("ip" in kinds and ("::" in text or text.count(":") >= 2)
                and _add(found, _IPV6, text, "ip", first, _valid_ip)):
            return True
        if "secret" in kinds and _maybe_secret(text):
            return _add(found, _SECRET, text, "secret", first)
        return False

    def _digitish(self, text: str, found: list[Find], first: bool) -> bool:
        """The digit-run detectors (phone, ID card, bank card, IPv4, IBAN), as _walk."""
        kinds = self.kinds
        for m in _DIGITISH.finditer(text):
            group = m.lastgroup
            value = m.group()
            start = m.start()
            if group == "num":
                kind = _classify_number(value)
                if kind is not None and kind in kinds:
                    found.append((start, m.end(), kind))
                elif " " in value:
                    found += _group_finds(value, start, kinds)
                if "ip" in kinds and value.count(".") >= 3:
                    found += ((start + a, start + b, "ip") for a, b in _ipv4_inside(value))
            elif group == "ipv4":
                if "ip" in kinds and _valid_ip(value):
                    found.append((start, m.end(), "ip"))
            elif group == "iban" and "iban" in kinds:
                length = _iban_length(value)
                if length:
                    found.append((start, start + length, "iban"))
            if first and found:  # empty on entry when `first`
                return True
        return False


def _add(found: list[Find], pattern: re.Pattern[str], text: str, kind: str, first: bool,
         valid: Callable[[str], bool] | None = None) -> bool:
    """Appends the matches of `pattern` (that `valid` accepts) as finds of `kind`; with `first`
    it stops at the first and says so (True). A search loop: cheaper than finditer()."""
    pos, n = 0, len(text)
    while pos <= n and (m := pattern.search(text, pos)):
        start, end = m.span()
        pos = end if end > start else end + 1  # an empty match holds no data: step past it
        if end > start and (valid is None or valid(m.group())):
            found.append((start, end, kind))
            if first:
                return True
    return False


def _maybe_secret(text: str) -> bool:
    """The cheap gate before the secret patterns: one of their fixed pieces occurs."""
    low = text.lower()
    # An unrolled chain of substring checks: ~1 us, where any() or a regex costs 3-20. The
    # Chinese pieces are looked for only in text that is not all ASCII (a flag, no scan).
    return (
        "key" in low or "secret" in low or "passw" in low or "token" in low
        or "k-" in low or "akia" in low or "gh" in low or "xox" in low or "aiza" in low
        or "-----" in low or "eyj" in low
        or (not text.isascii() and ("密码" in text or "口令" in text))
    )


def _ipv4_inside(value: str) -> list[tuple[int, int]]:
    """IPv4 addresses that a digit-run candidate swallowed ("(10.0.0.1", "138... 10.0.0.1")."""
    return [m.span() for m in _IPV4_INSIDE.finditer(value) if _valid_ip(m.group())]


def _group_finds(value: str, offset: int, kinds: frozenset[str]) -> Iterator[Find]:
    """The values inside a space-separated run that failed as a whole ("4111 1111 1111 1111 2",
    "13812345678 11010519491231002X"), left to right, each the longest run of consecutive groups
    from its first group that validates as a kind in `kinds`."""
    groups = value.split()
    starts: list[int] = []  # where each group starts in `value`: found only once needed
    i, n = 0, len(groups)
    while i < n:
        # From the first group, the whole run (already classified) is not tried again.
        for j in range(n - 1 if i else n - 2, i - 1, -1):
            piece = " ".join(groups[i : j + 1])
            if len(piece) - (j - i) < 7:
                continue
            kind = _classify_number(piece)
            if kind is not None and kind in kinds:
                if not starts:
                    at = 0
                    for group in groups:
                        at = value.index(group, at)
                        starts.append(at)
                        at += len(group)
                yield offset + starts[i], offset + starts[j] + len(groups[j]), kind
                i = j
                break
        i += 1


def _iban_length(value: str) -> int:
    """The length of the valid IBAN at the start of `value` (0 if none). The pattern is greedy
    across spaces ("DE89 3704 ... 00 IBAN DE89"): shorter prefixes are tried too."""
    groups = value.split(" ")
    for n in range(len(groups), 0, -1):
        candidate = "".join(groups[:n])
        if len(candidate) < 15:
            return 0
        if _iban.is_valid(candidate):
            return len(" ".join(groups[:n]))
    return 0


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
