"""Surrogates for personal data: replace on the way out, re-scan, restore on the way back.

Pure functions and small state machines, no I/O. A private request that the edge cannot take may
go to the cloud with each detected value replaced by a surrogate token such as `[EMAIL_1]`; the
rewritten body is scanned again by every configured detector and refused if anything is left;
the answer, plain or streamed, gets each surrogate back as its original value.

Why tokens and not realistic fake values: a model copies a bracketed, upper-case token verbatim
(redaction tokens are common in training text); a fake e-mail or phone number invites it to
reformat, "correct" or reason about the value, after which it cannot be restored. A fake value
would also be found again by the re-scan (it is an e-mail to the detector), could collide with a
real value in the same conversation, and might belong to a real person. A token contains no `@`,
no digit run and no key shape, so the re-scan passes only when every value really was replaced.

The mapping (surrogate -> original) lives in a `Surrogates` object for one request; its repr
names the kinds only, so it cannot leak into a log or trace by accident.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from edgecloud.gateway.errors import NoAllowedEndpoint
from edgecloud.gateway.privacy import PrivacyDetector

# Every surrogate has this shape; the restorer looks up what it finds in the request's mapping
# and leaves any other bracketed token (one the model altered or made up) as it is.
SURROGATE = re.compile(r"\[[A-Z][A-Z0-9_]*_[0-9]+\]", re.ASCII)
# Where a surrogate may start in JSON text: `[` before a capital letter or at the end of a
# string, or an escape (which could spell either). The JSON around answer text (`"choices":[{`)
# and the `[DONE]` line do not match.
MAYBE_SURROGATE = re.compile(rb'\[(?!DONE\])[A-Z"]|\\u')
# Values in these subtrees are not text (image, audio and file payloads): never rewritten.
_OPAQUE_KEYS = frozenset({"image_url", "input_audio", "file"})


class Surrogates:
    """One request's mapping from surrogate to original value, and the kinds replaced."""

    __slots__ = ("_originals", "_prefixes", "_longest", "kinds")

    def __init__(self, originals: dict[str, str], kinds: Iterable[str]) -> None:
        self._originals = originals
        self.kinds: tuple[str, ...] = tuple(sorted(set(kinds)))
        # Every proper prefix of a surrogate: what a stream may hold back at a text's end.
        self._prefixes = frozenset(s[:k] for s in originals for k in range(1, len(s)))
        self._longest = max((len(s) for s in originals), default=0)

    def __repr__(self) -> str:  # never the values
        return f"Surrogates(kinds={self.kinds!r}, count={len(self._originals)})"

    def __len__(self) -> int:
        return len(self._originals)

    def restore(self, text: str) -> str:
        """`text` with every known surrogate replaced by its original value."""
        if "[" not in text:
            return text
        get = self._originals.get
        return SURROGATE.sub(lambda m: get(m.group(), m.group()), text)

    def held_back(self, text: str) -> int:
        """Where the tail of `text` that could be the start of a surrogate begins (len if none).

        A proper prefix of a surrogate holds one `[`, at its start, so only the last `[` within
        the longest surrogate's length can begin one."""
        n = len(text)
        i = text.rfind("[", max(0, n - self._longest + 1))
        return i if i >= 0 and text[i:] in self._prefixes else n


@dataclass(slots=True)
class Rewritten:
    """A request body with surrogates in place of personal data, ready to send."""

    body: dict[str, Any]
    raw: bytes
    surrogates: Surrogates = field(repr=False)


class Pseudonymizer:
    """Rewrites request bodies for the kinds that may leave the edge as surrogates."""

    def __init__(self, detector: PrivacyDetector, allowed: Iterable[str]) -> None:
        self.detector = detector
        self.allowed = frozenset(allowed)

    def rewrite(self, body: dict[str, Any]) -> Rewritten | None:
        """The body with every detected value replaced, or None when a kind that may not leave
        (a secret, an unlisted custom pattern) was found: then the request stays private.

        Raises NoAllowedEndpoint (503, naming the rule) when the rewritten body still holds
        something a detector finds: it is not sent."""
        strings: list[str] = []
        _walk(body, strings.append, top=True)
        corpus = "".join(strings)
        table: dict[str, str] = {}  # original value -> surrogate
        counters: dict[str, int] = {}

        def surrogate(value: str, kind: str) -> str:
            s = table.get(value)
            if s is None:
                n = counters.get(kind, 0)
                while True:  # never a token that the request's own text already holds
                    n += 1
                    s = f"[{kind.upper()}_{n}]"
                    if s not in corpus:
                        break
                counters[kind] = n
                table[value] = s
            return s

        rewritten: dict[str, str] = {}
        for text in strings:
            if text not in rewritten:
                new = self._replace(text, surrogate)
                if new is None:
                    return None
                rewritten[text] = new
        new_body = _map(body, rewritten.__getitem__, top=True)
        self.rescan(new_body)
        surrogates = Surrogates({s: v for v, s in table.items()},
                                (s[1 : s.rindex("_")].lower() for s in table.values()))
        return Rewritten(new_body, orjson.dumps(new_body), surrogates)

    def _replace(self, text: str, surrogate: Callable[[str, str], str]) -> str | None:
        """One text with its finds replaced, or None if a kind that may not leave is found.

        A candidate can hide a second value (the detector's digit-run candidates are capped in
        length, a run can swallow an IPv4 address): the rewritten text is searched again, a few
        times at most, for finds that do not touch a surrogate; the re-scan decides the rest."""
        for round_ in range(3):
            finds = self.detector.spans(text)
            if round_ and finds:
                tokens = [m.span() for m in SURROGATE.finditer(text)]
                finds = [f for f in finds
                         if not any(f[0] < end and start < f[1] for start, end in tokens)]
            if not finds:
                break
            for _, _, kind in finds:
                if kind not in self.allowed:
                    return None
            out: list[str] = []
            at = 0
            for start, end, kind in _merged(finds):
                out += (text[at:start], surrogate(text[start:end], kind))
                at = end
            out.append(text[at:])
            text = "".join(out)
            if self.detector.detect([text]) is None:
                break
        return text

    def rescan(self, body: dict[str, Any]) -> None:
        """Raise NoAllowedEndpoint if any detector still finds something in the body's strings
        (and its keys), rewritten parts or not."""
        strings: list[str] = []
        _walk(body, strings.append, top=True, keys=True)
        kind = self.detector.detect(strings)
        if kind is not None:
            raise NoAllowedEndpoint(
                f"privacy.pii.{kind}",
                "personal data was still found after pseudonymisation; the request was not sent",
            )


def _merged(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Sorted finds with overlapping ones joined into one span, named by the first find's
    kind (a phone number inside an e-mail address is replaced with the address)."""
    out: list[tuple[int, int, str]] = []
    for start, end, kind in spans:
        if out and start < out[-1][1]:
            s0, e0, k0 = out[-1]
            out[-1] = (s0, max(e0, end), k0)
        else:
            out.append((start, end, kind))
    return out


def _walk(obj: Any, visit: Callable[[str], object], top: bool = False,
          keys: bool = False) -> None:
    """Call `visit` on every text string of a JSON value (not the top-level model, not the
    payloads of image, audio and file parts)."""
    if isinstance(obj, str):
        visit(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k in _OPAQUE_KEYS or (top and k == "model"):
                continue
            if keys:
                visit(k)
            _walk(v, visit, keys=keys)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, visit, keys=keys)


def _map(obj: Any, fn: Callable[[str], str], top: bool = False) -> Any:
    """A copy of a JSON value with `fn` applied to its text strings (as _walk visits them)."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: v if k in _OPAQUE_KEYS or (top and k == "model") else _map(v, fn)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map(v, fn) for v in obj]
    return obj


# -- the way back ------------------------------------------------------------------------------

def restore_answer(data: bytes, surrogates: Surrogates) -> bytes:
    """A whole (non-streamed) JSON answer with its surrogates restored in `choices`."""
    if MAYBE_SURROGATE.search(data) is None:
        return data
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        return data
    answer["choices"] = _map(answer["choices"], surrogates.restore)
    return orjson.dumps(answer)
