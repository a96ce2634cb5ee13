"""Anthropic's Messages API, translated to and from chat completions in this one place.

Pure functions and a stream state machine, like api/responses.py: `messages_to_chat` turns a
`/v1/messages` body into the equivalent chat completions body, `message_from_chat` a whole chat
answer into a Message, `MessagesStream` chat stream chunks into Anthropic's events, and
`anthropic_error` our errors into Anthropic's error shape.
"""

from __future__ import annotations

from typing import Any

import orjson

from edgecloud.api.errors import APIError, BadRequest
from edgecloud.api.responses import ChatStreamTranslator, new_id, tools_to_chat

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "content_filter": "refusal"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
                529: "overloaded_error"}


def anthropic_error_body(status: int, message: str) -> bytes:
    """Anthropic's error shape: {"type": "error", "error": {"type", "message"}}."""
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def anthropic_error(err: APIError) -> bytes:
    return anthropic_error_body(err.status, err.message)


def messages_to_chat(data: Any, *, count_only: bool = False) -> dict[str, Any]:
    """The chat completions body for a Messages body; BadRequest names the field.

    `count_only` (count_tokens) does not require max_tokens."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    for name in ("mcp_servers", "container"):
        if data.get(name):
            raise BadRequest(f"'{name}' is not available here (it needs Anthropic's servers).",
                             param=name, code="unsupported_parameter")
    max_tokens = data.get("max_tokens")
    if not count_only and (type(max_tokens) is not int or max_tokens < 1):
        raise BadRequest("'max_tokens' is required and must be a positive integer.",
                         param="max_tokens")
    messages: list[dict[str, Any]] = []
    system = data.get("system")
    if system:
        messages.append({"role": "system", "content": _system(system)})
    raw = data.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list.", param="messages")
    for i, msg in enumerate(raw):
        messages += _message(msg, f"messages[{i}]")
    out: dict[str, Any] = {"messages": messages}
    for name in ("model", "temperature", "top_p", "top_k", "stream"):
        if data.get(name) is not None:
            out[name] = data[name]
    if max_tokens is not None:
        out["max_completion_tokens"] = max_tokens
    if data.get("stream"):
        out["stream_options"] = {"include_usage": True}
    stops = data.get("stop_sequences")
    if stops:
        out["stop"] = stops
    tools = tools_to_chat(data.get("tools"), _function)
    if tools:
        out["tools"] = tools
    choice = data.get("tool_choice")
    if choice is not None:
        out["tool_choice"], parallel = _tool_choice(choice)
        if parallel is not None:
            out["parallel_tool_calls"] = parallel
    return out


def _system(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in system
    ):
        return "\n\n".join(b["text"] for b in system)
    raise BadRequest("'system' must be a string or a list of text blocks.", param="system")


def _message(msg: Any, where: str) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results become `tool` messages first."""
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        raise BadRequest(f"{where}.role must be user or assistant.", param=where)
    role = msg["role"]
    content = msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of blocks.", param=where)
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        bw = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise BadRequest(f"{bw}.text must be a string.", param=bw)
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, bw)}})
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise BadRequest(f"{bw} needs an id and a name.", param=bw)
            calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"], "arguments": orjson.dumps(block.get("input") or {})
                .decode()}})
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise BadRequest(f"{bw}.tool_use_id must be a string.", param=bw)
            text = _result_text(block.get("content"), bw)
            if block.get("is_error"):
                text = "Error: " + text
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                            "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning: not part of the prompt here
        else:
            raise BadRequest(f"{bw}.type {kind!r} is not supported here (text, image, "
                             "tool_use, tool_result).", param=bw)
    out = list(results)
    if calls:
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        out.append({"role": "assistant", "content": text or None, "tool_calls": calls})
    elif parts:
        out.append({"role": role, "content": parts})
    return out


def _image_url(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")  # type: ignore[union-attr]
        if (not isinstance(media, str) or media not in _IMAGE_TYPES or not isinstance(data, str)
                or not data):
            raise BadRequest(f"{where}.source needs media_type (one of "
                             f"{sorted(_IMAGE_TYPES)}) and base64 data.", param=where)
        return f"data:{media};base64,{data}"
    if kind == "url" and isinstance(source.get("url"), str):  # type: ignore[union-attr]
        return str(source["url"])  # type: ignore[index]
    raise BadRequest(f"{where}.source must be a base64 or url image source (file sources "
                     "are not supported: files are not stored here).", param=where)


def _result_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "text":
                raise BadRequest(f"{where}.content: a tool result may hold text blocks only "
                                 "here.", param=where)
            texts.append(str(block.get("text", "")))
        return "\n".join(texts)
    raise BadRequest(f"{where}.content must be a string or text blocks.", param=where)


def _function(tool: Any, where: str) -> dict[str, Any]:
    if (not isinstance(tool, dict) or tool.get("type") not in (None, "custom")
            or not isinstance(tool.get("name"), str)):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise BadRequest(f"{where}: only client tools (name, input_schema) are supported "
                         f"here, not {kind!r}.", param=where)
    fn: dict[str, Any] = {"name": tool["name"],
                          "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        fn["description"] = tool["description"]
    return fn


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    parallel = None
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is not None:
        parallel = not choice["disable_parallel_tool_use"]
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):  # type: ignore[union-attr]
        return {"type": "function", "function": {"name": choice["name"]}}, parallel  # type: ignore[index]
    raise BadRequest("'tool_choice.type' must be auto, any, tool (with a name) or none.",
                     param="tool_choice")


# -- answers -----------------------------------------------------------------------------------
def _usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    prompt = int(usage.get("prompt_tokens") or 0)
    return {"input_tokens": prompt - cached, "output_tokens":
            int(usage.get("completion_tokens") or 0), "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached}


def _stop_reason(finish: str | None, stop_sequence: str | None) -> str | None:
    if stop_sequence is not None:
        return "stop_sequence"
    return None if finish is None else _STOP_REASONS.get(finish, "end_turn")


def _arguments(text: str) -> Any:
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}


def message_from_chat(chat: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """A whole chat completion as an Anthropic Message."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"),
                        "name": fn.get("name", ""), "input": _arguments(fn.get("arguments", ""))})
    stop_sequence = choice.get("stop_sequence")
    return {"id": new_id("msg"), "type": "message", "role": "assistant",
            "model": model or chat.get("model", ""), "content": content,
            "stop_reason": _stop_reason(choice.get("finish_reason"), stop_sequence),
            "stop_sequence": stop_sequence, "usage": _usage(chat.get("usage"))}


class MessagesStream(ChatStreamTranslator):
    """Chat stream chunks in, Anthropic Messages server-sent events out (bytes)."""

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self.started = False
        self._index = -1  # the open content block, -1: none
        self._block: str | None = None  # "text" | "tool_use"
        self._calls: dict[int, int] = {}  # chat tool-call index -> block index
        self._finish: str | None = None
        self._stop_sequence: str | None = None
        self._usage: dict[str, Any] | None = None

    @staticmethod
    def _event(kind: str, obj: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    def start(self) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": new_id("msg"), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}
        return self._event("message_start", {"type": "message_start", "message": message})

    def _text_delta(self, text: str) -> bytes:
        out = b"" if self._block == "text" else self._open({"type": "text", "text": ""}, "text")
        return out + self._event("content_block_delta", {
            "type": "content_block_delta", "index": self._index,
            "delta": {"type": "text_delta", "text": text}})

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        out = b""
        key = int(call.get("index", 0))
        fn = call.get("function") or {}
        if key not in self._calls:
            out += self._open({"type": "tool_use", "id": call.get("id") or new_id("toolu"),
                               "name": fn.get("name") or "", "input": {}}, "tool_use")
            self._calls[key] = self._index
        if fn.get("arguments"):
            out += self._event("content_block_delta", {
                "type": "content_block_delta", "index": self._calls[key],
                "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}})
        return out

    def _finished(self, choice: dict[str, Any]) -> bytes:
        self._stop_sequence = choice.get("stop_sequence")
        return self._close()

    def _open(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close()
        self._index += 1
        self._block = kind
        return out + self._event("content_block_start", {
            "type": "content_block_start", "index": self._index, "content_block": block})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        return self._event("content_block_stop", {"type": "content_block_stop",
                                                  "index": self._index})

    def done(self) -> bytes:
        out = (b"" if self.started else self.start()) + self._close()
        usage = _usage(self._usage)
        delta = {"stop_reason": _stop_reason(self._finish or "stop", self._stop_sequence),
                 "stop_sequence": self._stop_sequence}
        out += self._event("message_delta", {"type": "message_delta", "delta": delta,
                                             "usage": usage})
        return out + self._event("message_stop", {"type": "message_stop"})

    def error(self, err: APIError) -> bytes:
        out = b"" if self.started else self.start()
        status = 529 if err.status == 503 else err.status
        return out + b"event: error\ndata: " + anthropic_error_body(status, err.message) + b"\n\n"
