"""Tool calls: the call syntax a model family writes, the grammar that forces a call, and the
parser that turns the model's text back into OpenAI `tool_calls`.

Families (picked from the chat template's source):
- `hermes` (Qwen 2.5/3, Hermes, many fine-tunes): `<tool_call>\\n{"name": ..., "arguments":
  {...}}\\n</tool_call>`, one block per call.
- `glm45` (GLM-4.5/4.6): `<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>...
  </tool_call>`; forced calls use the JSON body inside the same tags.
- `glm4` (GLM-4-9B-chat): the function name on the first line, then its arguments as JSON.
- `json` (any other template that renders tools, and the plain transcript of base models):
  the reply is `{"name": ..., "arguments": {...}}`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from edgecloud.api.errors import BadRequest
from edgecloud.api.openai import ChatCompletionRequest, ChatMessage, Tool
from edgecloud.node.grammar import tool_call_grammar

HERMES, GLM45, GLM4, JSON = "hermes", "glm45", "glm4", "json"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 4


def syntax_of_template(source: str | None) -> str:
    """The call syntax a chat template teaches its model (`json` when it names none)."""
    if not source:
        return JSON
    if "<arg_key>" in source:
        return GLM45
    if TOOL_CALL_OPEN in source:
        return HERMES
    if "<|observation|>" in source:
        return GLM4
    return JSON


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # a JSON object, as text

    def to_openai(self, call_id: str | None = None) -> dict[str, Any]:
        return {
            "id": call_id or new_call_id(),
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolPlan:
    """What a chat request asks of tools: `mode` none | auto | forced, and how to do it."""

    mode: str = "none"
    syntax: str = JSON
    names: tuple[str, ...] = ()
    template_tools: list[dict[str, Any]] | None = None  # passed to the chat template
    grammar: str | None = None  # forced calls only

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self.syntax, self.names, forced=self.mode == "forced")


def plan_tools(
    body: ChatCompletionRequest, template_source: str | None, template_has_tools: bool
) -> ToolPlan:
    """Check `tools`/`tool_choice` and the history against each other; 400 on a mismatch."""
    tools = body.tools or []
    by_name = {t.function.name: t for t in tools}
    _check_history(body.messages, by_name)
    choice = body.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise BadRequest("'tool_choice' needs 'tools'.", param="tool_choice")
        return ToolPlan()
    if choice is None:
        choice = "auto"
    if choice == "none":
        return ToolPlan()
    chosen: list[Tool] = tools
    if not isinstance(choice, str):
        name = choice.function.name
        if name not in by_name:
            raise BadRequest(
                f"tool_choice names the function '{name}', which is not in 'tools' "
                f"({', '.join(sorted(by_name))}).",
                param="tool_choice",
            )
        chosen = [by_name[name]]
    syntax = syntax_of_template(template_source) if template_has_tools else JSON
    template_tools = [t.model_dump(exclude_none=True, by_alias=True) for t in tools]
    names = tuple(by_name)
    if choice == "auto":
        if not template_has_tools:
            # The model was never taught to call: it answers as plain text.
            return ToolPlan(mode="none")
        return ToolPlan(mode="auto", syntax=syntax, names=names, template_tools=template_tools)
    parallel = body.parallel_tool_calls is not False and isinstance(choice, str)
    prefix, suffix = (
        (TOOL_CALL_OPEN + "\n", "\n" + TOOL_CALL_CLOSE)
        if syntax
        in (
            HERMES,
            GLM45,
        )
        else ("", "")
    )
    grammar = tool_call_grammar(
        [(t.function.name, t.function.parameters) for t in chosen],
        name_first=syntax == GLM4,
        prefix=prefix,
        suffix=suffix,
        # Without closing tags a model cannot tell "another call" from "done": one call.
        max_calls=MAX_PARALLEL_CALLS if parallel and suffix else 1,
    )
    return ToolPlan(
        mode="forced", syntax=syntax, names=names, template_tools=template_tools, grammar=grammar
    )


def _check_history(messages: Sequence[ChatMessage], tools: dict[str, Tool]) -> None:
    call_ids: set[str] = set()
    for i, msg in enumerate(messages):
        for j, call in enumerate(msg.tool_calls or ()):
            if msg.role != "assistant":
                raise BadRequest(
                    "Only assistant messages carry 'tool_calls'.", param=f"messages.{i}.tool_calls"
                )
            if tools and call.function.name not in tools:
                raise BadRequest(
                    f"messages[{i}].tool_calls[{j}] calls '{call.function.name}', which is not "
                    "in 'tools'.",
                    param=f"messages.{i}.tool_calls.{j}.function.name",
                )
            if call.id:
                call_ids.add(call.id)
        if msg.role == "tool":
            if not msg.tool_call_id:
                raise BadRequest(
                    f"messages[{i}] has role 'tool' but no 'tool_call_id'.",
                    param=f"messages.{i}.tool_call_id",
                )
            if msg.tool_call_id not in call_ids:
                raise BadRequest(
                    f"messages[{i}] answers the tool call '{msg.tool_call_id}', which no earlier "
                    "assistant message made.",
                    param=f"messages.{i}.tool_call_id",
                )


def history_arguments(arguments: str) -> Any:
    """Templates expect a call's arguments as an object (HF convention); keep text otherwise."""
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    return value if isinstance(value, dict) else arguments


# -- parsing the model's output ----------------------------------------------------------------

_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_GLM45_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def parse_calls(
    syntax: str, text: str, names: Sequence[str]
) -> tuple[str | None, list[ParsedCall]]:
    """Split a reply into (content, calls); text that is not a well-formed call stays content."""
    known = set(names)
    calls: list[ParsedCall] | None
    content = text
    if syntax in (HERMES, GLM45):
        start = text.find(TOOL_CALL_OPEN)
        if start < 0:
            return text, []
        calls = []
        for m in _HERMES_BLOCK.finditer(text, start):
            call = _json_call(m.group(1), known) or _glm45_call(m.group(1), known)
            if call is None:
                return text, []
            calls.append(call)
        content = text[:start]
    elif syntax == GLM4:
        head, _, rest = text.strip().partition("\n")
        args = _json_object(rest)
        if head.strip() not in known or args is None:
            return text, []
        calls = [ParsedCall(head.strip(), args)]
        content = ""
    else:
        calls = _json_calls(text.strip(), known)
        if not calls:
            return text, []
        content = ""
    return (content if content.strip() else None), calls


def _json_object(text: str) -> str | None:
    try:
        value = orjson.loads(text.strip())
    except orjson.JSONDecodeError:
        return None
    return orjson.dumps(value).decode() if isinstance(value, dict) else None


def _json_call(body: str, known: set[str]) -> ParsedCall | None:
    try:
        value = orjson.loads(body.strip())
    except orjson.JSONDecodeError:
        return None
    return _call_from_obj(value, known)


def _call_from_obj(value: Any, known: set[str]) -> ParsedCall | None:
    if not isinstance(value, dict) or value.get("name") not in known:
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        args = _json_object(args)
        return None if args is None else ParsedCall(value["name"], args)
    if not isinstance(args, dict):
        return None
    return ParsedCall(value["name"], orjson.dumps(args).decode())


def _json_calls(text: str, known: set[str]) -> list[ParsedCall]:
    """One call object, a list of them, or one per line."""
    try:
        value = orjson.loads(text)
        items = value if isinstance(value, list) else [value]
    except orjson.JSONDecodeError:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        try:
            items = [orjson.loads(ln) for ln in lines]
        except orjson.JSONDecodeError:
            return []
    calls = [_call_from_obj(v, known) for v in items]
    return [c for c in calls if c is not None] if calls and all(calls) else []


def _glm45_call(body: str, known: set[str]) -> ParsedCall | None:
    name, _, rest = body.strip().partition("\n")
    if name.strip() not in known:
        return None
    args: dict[str, Any] = {}
    for key, raw in _GLM45_ARG.findall(rest):
        try:
            args[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            args[key.strip()] = raw
    if _GLM45_ARG.sub("", rest).strip():
        return None
    return ParsedCall(name.strip(), orjson.dumps(args).decode())


@dataclass
class ToolCallParser:
    """Streams content as it comes and holds back what may turn out to be a call."""

    syntax: str
    names: Sequence[str]
    forced: bool = False
    _held: str = ""
    _emitted: list[str] = field(default_factory=list)
    _capturing: bool = False

    def feed(self, text: str) -> str:
        """New text in; the part that is surely content out."""
        if self.forced or self._capturing:
            self._held += text
            return ""
        window = self._held + text
        start = self._call_start(window)
        if start is not None:
            self._capturing = True
            self._held = window[start:]
            return self._emit(window[:start])
        keep = self._undecided_suffix(window)
        self._held = window[len(window) - keep :] if keep else ""
        return self._emit(window[: len(window) - keep])

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """At the end: (content not yet emitted, calls)."""
        held, self._held = self._held, ""
        if not held:
            return "", []
        content, calls = parse_calls(self.syntax, held, self.names)
        if not calls:
            return held, []
        return content or "", calls

    def _emit(self, text: str) -> str:
        if text:
            self._emitted.append(text)
        return text

    def _call_start(self, window: str) -> int | None:
        if self.syntax in (HERMES, GLM45):
            i = window.find(TOOL_CALL_OPEN)
            return i if i >= 0 else None
        if self._emitted:  # glm4 and json calls open the reply
            return None
        stripped = window.lstrip()
        if not stripped:
            return None
        if self.syntax == JSON:
            return 0 if stripped[0] in "{[" else None
        head, newline, _ = stripped.partition("\n")
        return 0 if newline and head.strip() in self.names else None

    def _undecided_suffix(self, window: str) -> int:
        if self.syntax in (HERMES, GLM45):
            for k in range(min(len(TOOL_CALL_OPEN) - 1, len(window)), 0, -1):
                if window.endswith(TOOL_CALL_OPEN[:k]):
                    return k
            return 0
        if self._emitted:
            return 0
        stripped = window.lstrip()
        if not stripped:
            return len(window)
        if self.syntax == GLM4 and "\n" not in stripped:
            if any(n.startswith(stripped) for n in self.names):
                return len(window)
        return 0
