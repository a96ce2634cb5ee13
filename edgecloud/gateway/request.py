"""What policy needs from a request body: parse once, check shapes, collect text and images.

Pure functions. The body is parsed once with orjson; the original bytes are forwarded, with only
the top-level "model" value spliced when the upstream wants another id.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from edgecloud.api.errors import BadRequest, one_of
from edgecloud.api.messages import messages_to_chat
from edgecloud.gateway.elided import ElidedURL

if TYPE_CHECKING:
    from edgecloud.gateway.translate import ClientAPI

_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_DATA_URI = re.compile(r"data:image/[A-Za-z0-9.+-]{1,32};base64,", re.ASCII)
_B64_SAMPLE = re.compile(r"[A-Za-z0-9+/]*={0,2}", re.ASCII)
_MODEL_VALUE = re.compile(rb'\s*:\s*"([^"\\]{0,256})"')
_SAMPLE = 4096


@dataclass(slots=True)
class RequestFacts:
    """The facts the placement policy reads; never logged with the texts."""

    body: dict[str, Any]
    model: str
    stream: bool
    texts: list[str] = field(default_factory=list)
    images: int = 0
    text_chars: int = 0
    max_output_tokens: int | None = None
    elided: bool = False  # `body` holds placeholders for large images (see parse_body)
    # The API the endpoint must speak; a Responses or Messages request speaks chat upstream.
    upstream_api: str = "chat.completions"
    api: ClientAPI | None = None  # the client's API when `body` is its chat translation
    original: dict[str, Any] | None = None  # the client's body, when translated
    opaque_input: bool = False  # input the privacy scan cannot read (token ids)

    @property
    def prompt_tokens_estimate(self) -> int:
        # ~3.5 characters a token over English and Chinese mixes; images count as 1,000 tokens.
        return int(self.text_chars / 3.5) + 1000 * self.images


def parse_json(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body or raise BadRequest (malformed, invalid UTF-8, too deep)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


# Bodies from this size up may have their large base64 images left out of the parse.
_ELIDE_FROM = 1 << 16
_ELIDE_MIN_PAYLOAD = 2 * _SAMPLE
_DATA_URI_START = re.compile(rb'"data:image/[A-Za-z0-9.+-]{1,32};base64,')
_B64_SAMPLE_B = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_NONCE = secrets.token_hex(8)  # per process: a client cannot forge a placeholder


def parse_body(raw: bytes) -> tuple[dict[str, Any], bool]:
    """Decode a request body like parse_json; returns (body, elided).

    A phone agent's body is mostly one base64 screenshot that policy never reads. In a large
    body each image data URI (a JSON string with no escapes, checked at both ends as
    _check_image does) is swapped for a short placeholder before orjson parses the rest, which
    saves decoding megabytes into a Python string. The swap is kept only if every placeholder
    turns up as the image_url.url of a message part and nowhere else (not in a text, not in a
    key); otherwise the whole body is parsed as it is. The original bytes are what is
    forwarded either way."""
    if len(raw) < _ELIDE_FROM:
        return parse_json(raw), False
    pieces: list[bytes] = []
    kept = n = 0
    nonce = _NONCE.encode()
    i = raw.find(b'"data:image/')
    while i >= 0:
        m = _DATA_URI_START.match(raw, i)
        if m is None:
            i = raw.find(b'"data:image/', i + 1)
            continue
        start = m.end()
        end = raw.find(b'"', start)
        if end < 0:
            break
        size = end - start
        if (
            size >= _ELIDE_MIN_PAYLOAD
            and size % 4 == 0
            and raw.find(b"\\", start, end) < 0
            and _B64_SAMPLE_B.fullmatch(raw, start, start + _SAMPLE) is not None
            and _B64_SAMPLE_B.fullmatch(raw, end - _SAMPLE, end) is not None
        ):
            pieces += (raw[kept:start], b"~elided~%d~%s" % (n, nonce))
            n += 1
            kept = end
        i = raw.find(b'"data:image/', end + 1)
    if not n:
        return parse_json(raw), False
    reduced = b"".join(pieces) + raw[kept:]
    try:
        body = orjson.loads(reduced)
    except orjson.JSONDecodeError:
        return parse_json(raw), False  # the exact error comes from the whole body
    if (
        isinstance(body, dict)
        and reduced.count(nonce) == n
        and _mark_elided(body) == set(range(n))
    ):
        return body, True
    return parse_json(raw), False


def _mark_elided(body: dict[str, Any]) -> set[int]:
    """Placeholders found at image_url.url of message parts (turned into ElidedURL there)."""
    found: set[int] = set()
    tail = "~" + _NONCE
    messages = body.get("messages")
    for msg in messages if isinstance(messages, list) else ():
        content = msg.get("content") if isinstance(msg, dict) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url.endswith(tail):
                continue
            k = url.rfind("~elided~")
            if k < 0:
                continue
            try:
                index = int(url[k + 8 : -len(tail)])
            except ValueError:
                continue
            if index in found:
                return set()  # a duplicate cannot come from us
            found.add(index)
            elided = ElidedURL(url[:k])
            if isinstance(image, dict):
                image["url"] = elided
            else:
                part["image_url"] = elided
    return found


def _check_image(part: dict[str, Any], where: str) -> None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if type(url) is ElidedURL:
        return  # checked on the raw bytes by parse_body
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where}.image_url.url must be a non-empty string.", param=where)
    if url.startswith("data:"):
        m = _DATA_URI.match(url)
        if m is None:
            raise BadRequest(
                f"{where}.image_url.url is a data URI but not data:image/<type>;base64,<data>.",
                param=where,
            )
        payload_len = len(url) - m.end()
        # Validate the length and a sample of the base64 text at both ends rather than decode
        # megabytes on the hot path; the model server decodes (and refuses) the whole image.
        head = url[m.end() : m.end() + _SAMPLE]
        tail = url[-_SAMPLE:] if payload_len > _SAMPLE else ""
        if (
            payload_len == 0
            or payload_len % 4
            or not url.isascii()
            or _B64_SAMPLE.fullmatch(head) is None
            or (tail and _B64_SAMPLE.fullmatch(tail) is None)
        ):
            raise BadRequest(f"{where}.image_url.url holds broken base64 image data.", param=where)
    elif not url.startswith(("http://", "https://")):
        raise BadRequest(
            f"{where}.image_url.url must be an http(s) URL or a data URI.", param=where
        )


def _content(facts: RequestFacts, content: Any, i: int) -> None:
    """A message's content into `facts`; `i` names the message in errors (messages[i])."""
    if content is None:
        return
    if isinstance(content, str):
        facts.texts.append(content)
        facts.text_chars += len(content)
        return
    if not isinstance(content, list):
        where = f"messages[{i}]"
        raise BadRequest(f"{where}.content must be a string or a list of parts.", param=where)
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            pw = f"messages[{i}].content[{j}]"
            raise BadRequest(f"{pw} must be an object with a type.", param=pw)
        ptype = part.get("type")
        if ptype == "text":
            text = part.get("text")
            if not isinstance(text, str):
                pw = f"messages[{i}].content[{j}]"
                raise BadRequest(f"{pw}.text must be a string.", param=pw)
            facts.texts.append(text)
            facts.text_chars += len(text)
        elif ptype == "image_url":
            _check_image(part, f"messages[{i}].content[{j}]")
            facts.images += 1
        elif not one_of(ptype, _PART_TYPES):
            pw = f"messages[{i}].content[{j}]"
            raise BadRequest(f"{pw}.type {ptype!r} is not a known content part type.", param=pw)


_NUMBERS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")


def _common(facts: RequestFacts, body: dict[str, Any]) -> None:
    get = body.get
    for name in ("max_tokens", "max_completion_tokens"):
        value = get(name)
        if value is not None:
            if type(value) is not int or value < 1:
                raise BadRequest(f"{name} must be a positive integer.", param=name)
            facts.max_output_tokens = value
    for name in _NUMBERS:
        value = get(name)
        if value is not None and type(value) is not float and type(value) is not int:
            raise BadRequest(f"{name} must be a number.", param=name)


def _model_and_stream(body: dict[str, Any]) -> tuple[str, bool]:
    model = body.get("model", "auto")
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be a non-empty string.", param="model")
    stream = body.get("stream", False)
    if type(stream) is not bool:
        raise BadRequest("stream must be true or false.", param="stream")
    return model, stream


def inspect_chat(body: dict[str, Any]) -> RequestFacts:
    """Check a /v1/chat/completions body and collect its texts and images."""
    model, stream = _model_and_stream(body)
    facts = RequestFacts(body=body, model=model, stream=stream)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list.", param="messages")
    # Error texts (messages[i]...) are formatted only when raised: this runs for every request.
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            where = f"messages[{i}]"
            raise BadRequest(f"{where} must be an object.", param=where)
        role = msg.get("role")
        if not one_of(role, _ROLES):
            where = f"messages[{i}]"
            raise BadRequest(f"{where}.role must be one of {sorted(_ROLES)}.", param=where)
        _content(facts, msg.get("content"), i)
        calls = msg.get("tool_calls")
        legacy = msg.get("function_call")
        if calls is not None or legacy is not None:
            for call in [*(calls if isinstance(calls, list) else ()), {"function": legacy}]:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and "arguments" in fn:
                    _text(facts, _as_text(fn["arguments"]))
    # Tool definitions reach the model's prompt too: their descriptions, enums and defaults.
    tools = body.get("tools")
    functions = body.get("functions")
    if tools is not None or functions is not None:
        for tool in [*(tools if isinstance(tools, list) else ()), *_list(functions)]:
            fn = tool.get("function", tool) if isinstance(tool, dict) else None
            if isinstance(fn, dict):
                for text in _strings([fn.get("description"), fn.get("parameters")]):
                    _text(facts, text)
    _common(facts, body)
    return facts


def _text(facts: RequestFacts, text: str) -> None:
    facts.texts.append(text)
    facts.text_chars += len(text)


def _as_text(value: Any) -> str:
    """A call's arguments: a JSON string by the spec, but some clients send the object."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON value (keys excluded), depth first."""
    out: list[str] = []
    stack = [value]
    while stack:
        cur = stack.pop()
        if isinstance(cur, str):
            out.append(cur)
        elif isinstance(cur, dict):
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)
    return out


def inspect_translated(api: ClientAPI, body: dict[str, Any]) -> RequestFacts:
    """A Responses or Messages body: translated to chat, then checked as chat (one scan)."""
    facts = inspect_chat(api.to_chat(body))
    facts.api, facts.original = api, body
    return facts


def inspect_count_tokens(body: dict[str, Any]) -> RequestFacts:
    """A Messages count_tokens body: scanned as its chat translation, forwarded as it is to an
    endpoint that serves Messages (the count is the endpoint's own tokenizer's)."""
    facts = inspect_chat(messages_to_chat(body, count_only=True))
    facts.body, facts.stream, facts.upstream_api = body, False, "messages"
    return facts


def inspect_embeddings(body: dict[str, Any]) -> RequestFacts:
    """Check a /v1/embeddings body and collect its input texts; token ids are opaque."""
    model = body.get("model", "auto")
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be a non-empty string.", param="model")
    facts = RequestFacts(body=body, model=model, stream=False, upstream_api="embeddings",
                         max_output_tokens=1)
    value = body.get("input")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise BadRequest("input must be a string or a non-empty list.", param="input")
    for item in items:
        if isinstance(item, str):
            _text(facts, item)
        elif type(item) is int or (isinstance(item, list) and all(type(t) is int for t in item)):
            facts.opaque_input = True
        else:
            raise BadRequest("input must hold strings or token ids.", param="input")
    return facts


def inspect_completion(body: dict[str, Any]) -> RequestFacts:
    """Check a /v1/completions body and collect its prompt texts."""
    model, stream = _model_and_stream(body)
    facts = RequestFacts(body=body, model=model, stream=stream, upstream_api="completions")
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompt must be a string or a non-empty list of strings.", param="prompt")
    for p in prompts:
        facts.texts.append(p)
        facts.text_chars += len(p)
    _common(facts, body)
    return facts


def _model_keys(raw: bytes) -> list[int]:
    """Where b'"model"' occurs (the first two at most).

    A 2 MB screenshot body is one long base64 string: hopping from quote to quote (memchr)
    crosses it ~30x faster than a substring search. Where quotes are dense (long text
    histories) the hop loop hands over to the substring search."""
    if len(raw) < 65536:
        first = raw.find(b'"model"')
        return [] if first < 0 else [first] if raw.find(b'"model"', first + 7) < 0 else [
            first, -1]
    found: list[int] = []
    i = raw.find(b'"')
    hops = 0
    while i >= 0:
        if raw.startswith(b'"model"', i):
            found.append(i)
            if len(found) == 2:
                return found
            i += 7
        hops += 1
        if hops > 512:
            j = raw.find(b'"model"', i)
            while j >= 0 and len(found) < 2:
                found.append(j)
                j = raw.find(b'"model"', j + 7)
            return found
        i = raw.find(b'"', i + 1)
    return found


def with_model(raw: bytes, body: dict[str, Any], model: str) -> bytes:
    """The body with its top-level "model" set to `model`, splicing bytes when it is safe."""
    parts = with_model_parts(raw, body, model)
    return raw if parts[0] is raw else b"".join(parts)


@lru_cache(maxsize=64)
def _json_text(value: str) -> bytes:
    """`value` as the inside of a JSON string (model ids: a few, from the config or endpoints)."""
    return orjson.dumps(value)[1:-1]


def with_model_parts(
    raw: bytes, body: dict[str, Any], model: str, elided: bool = False
) -> Sequence[bytes | memoryview]:
    """with_model as pieces written one after the other: a spliced body is not copied."""
    current = body.get("model")
    if current == model:
        return (raw,)
    if isinstance(current, str):
        keys = _model_keys(raw)
        # Exactly one "model" key in the whole body, followed by the value we parsed: that must
        # be the top-level one (inside JSON strings a quote is escaped, so it cannot match there).
        if len(keys) == 1:
            key = keys[0]
            value = current.encode()
            if raw.startswith(b':"%s"' % value, key + 7):  # compact JSON, most clients' form
                start, end = key + 9, key + 9 + len(value)
            else:
                m = _MODEL_VALUE.match(raw, key + 7)
                if m is None or m.group(1) != value:
                    start = end = -1
                else:
                    start, end = m.span(1)
            if start >= 0:
                mv = memoryview(raw)
                return (mv[:start], _json_text(model), mv[end:])
    if elided:  # the parsed body holds placeholders: re-encode from the whole body
        body = parse_json(raw)
    try:
        return (orjson.dumps({**body, "model": model}),)
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels but writes 254: a deeper body whose "model" cannot be
        # spliced in place (escaped, or repeated) cannot be re-encoded.
        raise BadRequest(
            "The request body is nested too deeply to forward with another model id (at most "
            "254 levels); flatten it, or write the top-level \"model\" key once, unescaped.",
            code="body_too_deep",
        ) from None
