"""Chat histories in which the assistant called a tool and the tool answered."""

from __future__ import annotations

from typing import Any


def tool_call(name: str, arguments: str, call_id: str = "call_1") -> dict[str, Any]:
    """One assistant tool call as the OpenAI API writes it."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_exchange(
    user: list[dict[str, Any]], call: dict[str, Any], result: str
) -> list[dict[str, Any]]:
    """`user`, then the assistant making `call` (no content), then the tool's `result`."""
    return [
        *user,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": result},
    ]
