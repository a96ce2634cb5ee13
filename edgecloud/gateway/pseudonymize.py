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
_SURROGATE_B = re.compile(rb"\[[A-Z][A-Z0-9_]*_[0-9]+\]")
# A JSON string that ends with what could be the start of a surrogate (`"...[EMA"`).
PREFIX_AT_STRING_END = re.compile(rb'\[[A-Z0-9_]*"')
# The request fields of the OpenAI API: as keys they hold no personal data. Other keys (in
# metadata, tool schemas, extra fields) are scanned.
_KNOWN_KEYS = frozenset({
    "model", "messages", "role", "content", "name", "type", "text", "image_url", "url",
    "detail", "tool_calls", "tool_call_id", "id", "function", "arguments", "tools",
    "tool_choice", "stream", "stream_options", "include_usage", "max_tokens",
    "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed", "user",
    "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "logit_bias",
    "response_format", "prompt", "suffix", "echo", "best_of", "parallel_tool_calls",
    "description", "parameters", "strict", "refusal", "input_audio", "file", "metadata",
})
# Values in these subtrees are not text (image, audio and file payloads): never rewritten.
_OPAQUE_KEYS = frozenset({"image_url", "input_audio", "file"})


class Surrogates:
    """One request's mapping from surrogate to original value, and the kinds replaced."""

    __slots__ = ("_originals", "_prefixes", "_longest", "_json", "kinds")

    def __init__(self, originals: dict[str, str], kinds: Iterable[str]) -> None:
        """`kinds`: the distinct kinds replaced."""
        self._originals = originals
        self.kinds: tuple[str, ...] = tuple(sorted(kinds))
        # Every proper prefix of a surrogate: what a stream may hold back at a text's end
        # (made on first use: plain answers never need it).
        self._prefixes: frozenset[str] | None = None
        self._json: dict[bytes, bytes] | None = None
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

    def restore_json(self, data: bytes) -> bytes:
        """JSON text (without `\\u` escapes) with every known surrogate replaced by its original,
        JSON-escaped: a surrogate has no character that JSON escapes, so it is found as bytes."""
        table = self._json
        if table is None:
            table = self._json = {s.encode(): orjson.dumps(v)[1:-1]
                                  for s, v in self._originals.items()}
        get = table.get
        return _SURROGATE_B.sub(lambda m: get(m.group(), m.group()), data)

    def held_back(self, text: str) -> int:
        """Where the tail of `text` that could be the start of a surrogate begins (len if none).

        A proper prefix of a surrogate holds one `[`, at its start, so only the last `[` within
        the longest surrogate's length can begin one."""
        n = len(text)
        i = text.rfind("[", max(0, n - self._longest + 1))
        if i < 0:
            return n
        if self._prefixes is None:
            self._prefixes = frozenset(s[:k] for s in self._originals for k in range(1, len(s)))
        return i if text[i:] in self._prefixes else n


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
        keys: set[str] = set()
        _strings(body, strings, keys, True)
        detect = self.detector.detect
        # The re-scan, part one: keys are never rewritten, so nothing may be found in them.
        unknown = keys - _KNOWN_KEYS
        if unknown:
            self._refuse(detect(list(unknown)))
        corpus = "".join(strings)
        table: dict[str, str] = {}  # original value -> surrogate
        counters: dict[str, int] = {}  # kind -> surrogates made

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

        # Every string of the body is scanned by every detector; the rewritten ones again
        # after rewriting (in _replace), so every string of the new body has been scanned.
        changed: dict[str, str] = {}
        for text in strings:
            if text not in changed and detect([text]) is not None:
                new = self._replace(text, surrogate)
                if new is None:
                    return None
                changed[text] = new
        new_body = _map(body, changed, top=True)
        surrogates = Surrogates({s: v for v, s in table.items()}, counters)
        return Rewritten(new_body, orjson.dumps(new_body), surrogates)

    def _replace(self, text: str, surrogate: Callable[[str, str], str]) -> str | None:
        """One text with its finds replaced, or None if a kind that may not leave is found.
        Raises NoAllowedEndpoint if a detector still finds something in the result.

        A candidate can hide a second value (the detector's digit-run candidates are capped in
        length, a run can swallow an IPv4 address): the rewritten text is searched again, a few
        times at most, for finds that do not touch a surrogate."""
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
                return text
        # Something is left that could not be replaced (the caller only asks for texts in
        # which a detector found something).
        self._refuse(self.detector.detect([text]) or "unknown")
        return text

    @staticmethod
    def _refuse(kind: str | None) -> None:
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


def _strings(obj: Any, out: list[str], keys: set[str] | None, top: bool = False) -> None:
    """Collect the text strings of a JSON value (not the top-level model, not the payloads of
    image, audio and file parts, not message roles), and its keys when `keys` is given."""
    t = type(obj)
    if t is dict:
        for k, v in obj.items():
            if k in _OPAQUE_KEYS or (top and k == "model"):
                continue
            if keys is not None:
                keys.add(k)
            tv = type(v)
            if tv is dict or tv is list:
                _strings(v, out, keys)
            elif isinstance(v, str) and k != "role":  # roles: checked by inspect_chat
                out.append(v)
    elif t is list:
        for v in obj:
            _strings(v, out, keys)
    elif isinstance(obj, str):
        out.append(obj)


def _map(obj: Any, changed: dict[str, str], top: bool = False) -> Any:
    """A JSON value with the strings in `changed` replaced; parts without one are shared."""
    t = type(obj)
    if t is str:
        return changed.get(obj, obj)
    if t is dict:
        out = None
        for k, v in obj.items():
            tv = type(v)
            if tv is str:
                new = changed.get(v, v)
            elif tv is dict or tv is list:
                if k in _OPAQUE_KEYS:
                    continue
                new = _map(v, changed)
            elif isinstance(v, str):
                new = changed.get(v, v)
            else:
                continue
            if new is not v and not (top and k == "model"):
                if out is None:
                    out = dict(obj)
                out[k] = new
        return obj if out is None else out
    if t is list:
        items = [_map(v, changed) for v in obj]
        return obj if all(a is b for a, b in zip(items, obj, strict=True)) else items
    if isinstance(obj, str):  # a str subclass: checked as text all the same
        return changed.get(obj, obj)
    return obj


# -- the way back ------------------------------------------------------------------------------

def restore_answer(data: bytes, surrogates: Surrogates) -> bytes:
    """A whole (non-streamed) JSON answer with its surrogates restored (in `choices` when the
    answer has escapes and is decoded, anywhere as bytes when it has none)."""
    if MAYBE_SURROGATE.search(data) is None:
        return data
    if b"\\u" not in data:
        return surrogates.restore_json(data)
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        return data
    _restore_in(answer["choices"], surrogates)
    return orjson.dumps(answer)


def _restore_in(obj: dict[str, Any] | list[Any], surrogates: Surrogates) -> None:
    """Restore every string inside `obj`, in place."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        if isinstance(v, str):
            if "[" in v:
                obj[k] = surrogates.restore(v)  # type: ignore[index]
        elif isinstance(v, dict | list):
            _restore_in(v, surrogates)
