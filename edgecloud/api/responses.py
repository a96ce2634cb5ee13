"""OpenAI's Responses API, translated to and from chat completions in this one place.

Pure functions and a small stream state machine: `responses_to_chat` turns a `/v1/responses`
body into the chat completions body that means the same to the model; `response_from_chat`
turns a whole chat answer into a Response object; `ResponsesStream` turns chat stream chunks
into the typed Responses events. The node serves the API through them, and the gateway uses the
same functions for an endpoint that speaks only chat completions.

Stateless by design: nothing is stored, `previous_response_id` and `conversation` are refused.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from edgecloud.api.errors import APIError, BadRequest, one_of

_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})
# Fields that ask for what a stateless node without hosted tools cannot do.
_REFUSED = {
    "previous_response_id": "Responses are not stored here (store is false): send the whole "
                            "conversation in 'input' instead of previous_response_id.",
    "conversation": "Conversations are not stored here: send the whole conversation in 'input'.",
    "background": "Background responses are not supported; stream the response instead.",
    "prompt": "Stored prompt templates are not supported; send 'instructions' and 'input'.",
}
_PASSED = ("temperature", "top_p", "stream", "parallel_tool_calls", "user", "seed", "top_k",
           "min_p", "frequency_penalty", "presence_penalty", "repeat_penalty", "top_logprobs")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def responses_to_chat(data: Any) -> dict[str, Any]:
    """The chat completions body for a Responses body; BadRequest names the field."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    for name, why in _REFUSED.items():
        if data.get(name) not in (None, False, ""):
            raise BadRequest(why, param=name, code="unsupported_parameter")
    messages: list[dict[str, Any]] = []
    instructions = data.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("'instructions' must be a string.", param="instructions")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    messages += _input_messages(data.get("input"))
    out: dict[str, Any] = {"messages": messages}
    model = data.get("model")
    if model is not None:
        out["model"] = model
    for name in _PASSED:
        if data.get(name) is not None:
            out[name] = data[name]
    if data.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = data["max_output_tokens"]
    if data.get("stream"):
        out["stream_options"] = {"include_usage": True}
    tools = tools_to_chat(data.get("tools"), _function)
    if tools:
        out["tools"] = tools
    choice = data.get("tool_choice")
    if choice is not None:
        out["tool_choice"] = _tool_choice(choice)
    fmt = _text_format(data.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    return out


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a string or a non-empty list of items.", param="input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object.", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if not one_of(role, _ROLES):
                raise BadRequest(f"{where}.role must be one of {sorted(_ROLES)}.", param=where)
            out.append({"role": role, "content": _content(item.get("content"), where)})
        elif kind == "function_call":
            call = {"id": _str(item, "call_id", where), "type": "function",
                    "function": {"name": _str(item, "name", where),
                                 "arguments": _str(item, "arguments", where, "")}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
            if not isinstance(output, str):
                raise BadRequest(f"{where}.output must be a string.", param=where)
            out.append({"role": "tool", "tool_call_id": _str(item, "call_id", where),
                        "content": output})
        elif kind == "reasoning":
            continue  # a reasoning model's summary: not part of the prompt
        else:
            raise BadRequest(f"{where}.type {kind!r} is not supported here (message, "
                             "function_call, function_call_output).", param=where)
    return out


def _str(item: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = item.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise BadRequest(f"{where}.{key} must be a non-empty string.", param=f"{where}.{key}")
    return value


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts.", param=where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        pw = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if one_of(kind, _TEXT_PARTS):
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise BadRequest(f"{pw}.text must be a string.", param=pw)
            parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise BadRequest(f"{pw}.image_url must be a URL or a data URI (file_id is not "
                                 "supported: files are not stored here).", param=pw)
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise BadRequest(f"{pw}.type {kind!r} is not supported here (input_text, "
                             "output_text, input_image).", param=pw)
    return parts


def tools_to_chat(value: Any,
                  function: Callable[[Any, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """A request's 'tools' as chat completions tools: `function(tool, where)` checks one item
    (raising BadRequest at `where`) and returns its chat function."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("'tools' must be a list.", param="tools")
    return [{"type": "function", "function": function(tool, f"tools[{i}]")}
            for i, tool in enumerate(value)]


def _function(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise BadRequest(f"{where}: only function tools are supported here, not {kind!r} "
                         "(hosted tools run on OpenAI's servers).", param=where)
    return {k: tool[k] for k in ("name", "description", "parameters", "strict")
            if tool.get(k) is not None}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest("'tool_choice' must be auto, none, required or "
                     "{\"type\": \"function\", \"name\": ...}.", param="tool_choice")


def _text_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest("'text.format.type' must be text, json_object or json_schema.",
                     param="text.format")


# -- answers -----------------------------------------------------------------------------------
def _usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    inp = int(usage.get("prompt_tokens") or 0)
    out = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out}


class ResponseShell:
    """What every Response object of one request repeats (id, model, the request's settings)."""

    def __init__(self, request: dict[str, Any], model: str) -> None:
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.model = model
        self.request = request

    def body(self, status: str, output: list[dict[str, Any]],
             usage: dict[str, Any] | None = None, finish_reason: str | None = None
             ) -> dict[str, Any]:
        req = self.request
        text = req.get("text") if isinstance(req.get("text"), dict) else {}
        incomplete = None
        if finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "error": None, "incomplete_details": incomplete,
            "instructions": req.get("instructions"), "max_output_tokens":
                req.get("max_output_tokens"), "model": self.model, "output": output,
            "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "store": False, "temperature": req.get("temperature", 1.0),
            "text": {"format": (text or {}).get("format") or {"type": "text"}},
            "tool_choice": req.get("tool_choice", "auto"), "tools": req.get("tools") or [],
            "top_p": req.get("top_p", 1.0), "truncation": "disabled",
            "usage": None if usage is None else _usage(usage),
            "metadata": req.get("metadata") or {},
        }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [_text_part(text)] if status == "completed" else []}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(call_id: str, name: str, arguments: str, status: str = "completed"
               ) -> dict[str, Any]:
    return {"type": "function_call", "id": new_id("fc"), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def response_from_chat(chat: dict[str, Any], request: dict[str, Any],
                       shell: ResponseShell | None = None) -> dict[str, Any]:
    """A whole chat completion as a Response object."""
    shell = shell or ResponseShell(request, str(chat.get("model", "")))
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("content"):
        output.append(_message_item(new_id("msg"), message["content"]))
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        output.append(_call_item(call.get("id") or new_id("call"), fn.get("name", ""),
                                 fn.get("arguments", "")))
    return shell.body("completed", output, chat.get("usage"), choice.get("finish_reason"))


class ChatStreamTranslator:
    """The walk over chat stream chunks that each API's stream shares: the usage is kept, and
    each choice's text, tool-call deltas and finish go to the subclass, which returns the bytes
    of the events they stand for."""

    started = False
    _usage: dict[str, Any] | None = None
    _finish: str | None = None

    def start(self) -> bytes:
        raise NotImplementedError

    def _text_delta(self, text: str) -> bytes:
        raise NotImplementedError

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _finished(self, choice: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """One chat chunk (a dict) as the events it stands for."""
        out = b"" if self.started else self.start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text_delta(delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._call_delta(call)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                out += self._finished(choice)
        return out


class ResponsesStream(ChatStreamTranslator):
    """Chat stream chunks in, Responses server-sent events out (bytes)."""

    def __init__(self, request: dict[str, Any], model: str) -> None:
        self.shell = ResponseShell(request, model)
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self._text: str | None = None  # the open message's text, None when none is open
        self._msg_id = ""
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> open item
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self.started = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    def start(self) -> bytes:
        self.started = True
        body = self.shell.body("in_progress", [])
        return (self._event("response.created", response=body)
                + self._event("response.in_progress", response=body))

    def _finished(self, choice: dict[str, Any]) -> bytes:
        return self._close_all()

    def _text_delta(self, text: str) -> bytes:
        out = b""
        if self._text is None:
            self._text, self._msg_id = "", new_id("msg")
            index = len(self.output)
            self.output.append(_message_item(self._msg_id, "", "in_progress"))
            out += self._event("response.output_item.added", output_index=index,
                               item=self.output[index])
            out += self._event("response.content_part.added", item_id=self._msg_id,
                               output_index=index, content_index=0, part=_text_part(""))
        self._text += text
        return out + self._event("response.output_text.delta", item_id=self._msg_id,
                                 output_index=len(self.output) - 1, content_index=0,
                                 delta=text, logprobs=[])

    def _close_text(self) -> bytes:
        if self._text is None:
            return b""
        index = next(i for i, o in enumerate(self.output) if o.get("id") == self._msg_id)
        item = _message_item(self._msg_id, self._text)
        self.output[index] = item
        part = item["content"][0]
        out = (self._event("response.output_text.done", item_id=self._msg_id,
                           output_index=index, content_index=0, text=self._text, logprobs=[])
               + self._event("response.content_part.done", item_id=self._msg_id,
                             output_index=index, content_index=0, part=part)
               + self._event("response.output_item.done", output_index=index, item=item))
        self._text = None
        return out

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        out = b""
        key = int(call.get("index", 0))
        fn = call.get("function") or {}
        item = self._calls.get(key)
        if item is None:
            out += self._close_text()
            item = _call_item(call.get("id") or new_id("call"), fn.get("name") or "", "",
                              "in_progress")
            item["output_index"] = len(self.output)
            self._calls[key] = item
            self.output.append(item)
            out += self._event("response.output_item.added", output_index=item["output_index"],
                               item=_public(item))
        args = fn.get("arguments")
        if args:
            item["arguments"] += args
            out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=item["output_index"], delta=args)
        return out

    def _close_all(self) -> bytes:
        out = self._close_text()
        for item in self._calls.values():
            item["status"] = "completed"
            out += self._event("response.function_call_arguments.done", item_id=item["id"],
                               output_index=item["output_index"], name=item["name"],
                               arguments=item["arguments"])
            out += self._event("response.output_item.done", output_index=item["output_index"],
                               item=_public(item))
        self._calls.clear()
        return out

    def done(self) -> bytes:
        """The closing event (response.completed or response.incomplete), with usage."""
        out = (b"" if self.started else self.start()) + self._close_all()
        output = [_public(o) for o in self.output]
        body = self.shell.body("completed", output, self._usage, self._finish)
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, response=body)

    def error(self, err: APIError) -> bytes:
        """A failure after the stream began: an error event, then response.failed."""
        out = b"" if self.started else self.start()
        body = self.shell.body("failed", [_public(o) for o in self.output], self._usage)
        body["error"] = {"code": err.code or "server_error", "message": err.message}
        return (out + self._event("error", code=err.code, message=err.message, param=err.param)
                + self._event("response.failed", response=body))


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "output_index"}
