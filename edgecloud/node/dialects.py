"""The APIs the node serves by translation to its chat path: Responses and Messages.

A `Dialect` says how a translated request's chat answer goes back to the client: whole, as a
stream, and (Messages) in which error shape. The translations themselves live in
`api/responses.py` and `api/messages.py`, shared with the gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecloud.api.errors import APIError
from edgecloud.api.messages import MessagesStream, anthropic_error, message_from_chat
from edgecloud.api.replies import StreamCodec
from edgecloud.api.responses import ResponsesStream, response_from_chat


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    whole: Callable[[dict[str, Any], dict[str, Any], str], dict[str, Any]]
    stream: Callable[[dict[str, Any], str, int], StreamCodec]
    error_body: Callable[[APIError], bytes] | None = None  # None: the OpenAI envelope


RESPONSES = Dialect(
    "responses",
    whole=lambda chat, request, model: response_from_chat(chat, request),
    stream=lambda request, model, prompt_tokens: ResponsesStream(request, model),
)

MESSAGES = Dialect(
    "messages",
    whole=lambda chat, request, model: message_from_chat(chat, model),
    stream=lambda request, model, prompt_tokens: MessagesStream(model, prompt_tokens),
    error_body=anthropic_error,
)
