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

from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgecloud.api.errors import BadRequest
from edgecloud.api.openai import ChatMessage

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


def render_plain(messages: list[ChatMessage], image_marker: str | None = None) -> str:
    system: list[str] = []
    turns: list[str] = []
    for i, msg in enumerate(messages):
        text = message_text(msg, i, image_marker)
        if msg.role in ("system", "developer"):
            system.append(text.strip())
        else:
            turns.append(f"{_ROLE_NAMES[msg.role]}: {text.strip()}")
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

    def render(self, messages: list[ChatMessage], image_marker: str | None = None) -> str:
        """The prompt text; image parts become `image_marker` (None: images are refused)."""
        if self._template is None:
            return render_plain(messages, image_marker)
        plain: list[dict[str, Any]] = [
            {"role": m.role, "content": message_text(m, i, image_marker)}
            for i, m in enumerate(messages)
        ]
        try:
            text = self._template.render(
                messages=plain,
                add_generation_prompt=messages[-1].role != "assistant",
                bos_token=self.bos_text,
                eos_token=self.eos_text,
            )
        except TemplateError as exc:
            raise BadRequest(f"The model's chat template refused these messages: {exc}") from None
        # The tokenizer adds BOS itself; a template that writes it too would double it.
        if self.bos_text and text.startswith(self.bos_text):
            text = text[len(self.bos_text) :]
        return text


def _raise_template_error(message: str) -> None:
    raise TemplateError(message)
