"""Chat messages to one prompt string: the model's own chat template, or a plain one.

The embedded Gemma 3 270M is a base model without a chat template; for such models we use
PLAIN_TEMPLATE, a transcript a base model continues naturally:

    <system text>            (only when there is a system/developer message)

    User: <text>
    Assistant: <text>
    User: <text>
    Assistant:

Generation stops at the next "\\nUser:" line (PLAIN_STOPS), so the model does not write the
user's next turn.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgecloud.api.errors import BadRequest
from edgecloud.api.openai import ChatMessage
from edgecloud.node.tools import history_arguments

PLAIN_STOPS = ("\nUser:",)
_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "tool": "Tool", "function": "Tool"}


class NoVision(BadRequest):
    code = "model_not_vision"


def message_text(msg: ChatMessage, index: int, image_marker: str | None = None) -> str:
    """The text of one message, each image part written as `image_marker` where it stands.

    Without a marker (a node with no projector) image parts are refused; audio and files always.
    """
    content = msg.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        if part.type == "text":
            if part.text is None:
                raise BadRequest(
                    f"messages[{index}].content[{j}] is a text part without 'text'.",
                    param=f"messages.{index}.content.{j}.text",
                )
            texts.append(part.text)
        elif part.type in ("image_url", "input_image") and image_marker is not None:
            texts.append(image_marker)
        elif part.type in ("image_url", "input_image", "input_audio", "file"):
            if image_marker is None:
                reads, where = "text only", "Send images to a vision endpoint"
            else:
                reads, where = "text and images only", "Send it to an endpoint that reads it"
            raise NoVision(
                f"messages[{index}].content[{j}] is an '{part.type}' part, but this model reads "
                f"{reads}. {where} (the gateway routes them there).",
                param=f"messages.{index}.content.{j}",
            )
        else:
            raise BadRequest(
                f"messages[{index}].content[{j}] has unknown part type '{part.type}'.",
                param=f"messages.{index}.content.{j}.type",
            )
    return "".join(texts)


def render_plain(
    messages: list[ChatMessage],
    tools: list[dict[str, Any]] | None = None,
    image_marker: str | None = None,
) -> str:
    system: list[str] = []
    turns: list[str] = []
    for i, msg in enumerate(messages):
        text = message_text(msg, i, image_marker)
        if msg.role in ("system", "developer"):
            system.append(text.strip())
            continue
        calls = [
            orjson.dumps(
                {"name": c.function.name, "arguments": history_arguments(c.function.arguments)}
            ).decode()
            for c in msg.tool_calls or ()
        ]
        text = "\n".join(x for x in (text.strip(), *calls) if x)
        turns.append(f"{_ROLE_NAMES[msg.role]}: {text}")
    if tools:
        system.append(plain_tools_text(tools))
    head = "\n".join(s for s in system if s)
    body = "\n".join(turns)
    if messages[-1].role == "assistant":
        # Continue the assistant's partial answer instead of opening a new turn.
        return (head + "\n\n" if head else "") + body
    return (head + "\n\n" if head else "") + body + "\nAssistant:"


class ChatTemplate:
    """A GGUF chat template (Jinja2, sandboxed), or the plain transcript when there is none."""

    def __init__(self, source: str | None, bos_text: str = "", eos_text: str = "") -> None:
        self.source = source
        self.bos_text = bos_text
        self.eos_text = eos_text
        self._template = None
        if source:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_template_error
            self._template = env.from_string(source)

    @property
    def is_plain(self) -> bool:
        return self._template is None

    @property
    def default_stops(self) -> tuple[str, ...]:
        return PLAIN_STOPS if self.is_plain else ()

    @functools.cached_property
    def supports_tools(self) -> bool:
        """Whether the template renders `tools` (probed once, as llama.cpp does)."""
        if self._template is None:
            return False
        probe = {
            "type": "function",
            "function": {
                "name": "edgecloud_probe_fn",
                "description": "probe",
                "parameters": {"type": "object", "properties": {}},
            },
        }
        try:
            text = self._template.render(
                messages=[{"role": "user", "content": "hi"}],
                tools=[probe],
                add_generation_prompt=True,
                bos_token=self.bos_text,
                eos_token=self.eos_text,
            )
        except Exception:  # noqa: BLE001 - any template failure means "no tools"
            return False
        return "edgecloud_probe_fn" in text

    def render(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]] | None = None,
        image_marker: str | None = None,
    ) -> str:
        """The prompt text; image parts become `image_marker` (None: images are refused)."""
        if self._template is None:
            return render_plain(messages, tools, image_marker)
        plain = [_template_message(m, i, image_marker) for i, m in enumerate(messages)]
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        try:
            text = self._template.render(
                messages=plain,
                add_generation_prompt=messages[-1].role != "assistant",
                bos_token=self.bos_text,
                eos_token=self.eos_text,
                **extra,
            )
        except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
            # The template is the model author's program: whatever it raises is a refusal.
            raise BadRequest(f"The model's chat template refused these messages: {exc}") from None
        # The tokenizer adds BOS itself; a template that writes it too would double it.
        if self.bos_text and text.startswith(self.bos_text):
            text = text[len(self.bos_text) :]
        return text


def _template_message(
    msg: ChatMessage, index: int, image_marker: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role, "content": message_text(msg, index, image_marker)}
    if msg.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.function.name,
                    "arguments": history_arguments(c.function.arguments),
                },
            }
            for c in msg.tool_calls
        ]
    if msg.tool_call_id is not None:
        out["tool_call_id"] = msg.tool_call_id
    if msg.name is not None:
        out["name"] = msg.name
    return out


def plain_tools_text(tools: list[dict[str, Any]]) -> str:
    """The functions a base model may call, for the plain transcript's system block."""
    lines = ["You can call these functions:"]
    for t in tools:
        fn = t.get("function", {})
        lines.append(
            orjson.dumps(
                {k: fn[k] for k in ("name", "description", "parameters") if k in fn}
            ).decode()
        )
    lines.append('To call one, answer with {"name": <function name>, "arguments": <object>}.')
    return "\n".join(lines)


def _raise_template_error(message: str) -> None:
    raise TemplateError(message)
