"""The demo's mixed workload: what a phone-agent fleet sends, phase by phase (pure data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecloud.bench.workloads import png_bytes, png_uri, screenshot_turn


@dataclass(frozen=True)
class DemoRequest:
    """One request of the demo and what the policy must do with it."""

    phase: str
    kind: str  # public | personal | eu | screenshot
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    private: bool = False  # must never reach the cloud
    marker: str = ""  # a unique string in the body; the demo checks the cloud link never saw it
    more_markers: tuple[str, ...] = ()  # more of the body to look for (the screenshot's bytes)


def _chat(text: str, max_tokens: int, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "autoglm-phone-9b",
        "messages": [
            {"role": "system", "content": "You are a helpful phone assistant."},
            {"role": "user", "content": text},
        ],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "top_p": 0.9,
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
    }


PUBLIC_PROMPTS = [
    "Write one sentence about the weather in spring.",
    "List three fruits that are red.",
    "Explain in one line what a calendar app does.",
    "Suggest a name for a coffee shop.",
    "Describe a quiet beach at sunset.",
    "Give a tip for saving phone battery.",
]


def image_markers(b64: str, n: int = 4, width: int = 32) -> tuple[str, ...]:
    """Slices of a screenshot's base64 text, spread over it: if any part of the image crossed
    the cloud link as the client sent it, the byte scan finds one of these. Only slices
    without `+` and `/`, which a JSON re-encoder may escape."""
    found: list[str] = []
    step = max(1, len(b64) // n)
    for start in range(0, len(b64), step):
        for i in range(start, min(start + step, len(b64) - width)):
            piece = b64[i : i + width]
            if piece.isalnum():
                found.append(piece)
                break
    return tuple(found)


def build_phases(max_tokens: int, quick: bool) -> dict[str, list[DemoRequest]]:
    """The demo's phases in order. `quick` keeps every phase but sends fewer requests."""
    n = 2 if quick else 4
    phases: dict[str, list[DemoRequest]] = {}
    phases["public text"] = [
        DemoRequest("public text", "public", _chat(PUBLIC_PROMPTS[i % 6], max_tokens))
        for i in range(n)
    ]
    personal = [
        ("email", "Reply to anna.schmidt{i}@example.de and confirm the meeting."),
        ("phone", "Call my mother at 1381234{i:04d} and tell her I am late."),
        ("id card", "My ID card number is 11010519491231002X, fill in the form {i}."),
        ("bank card", "Pay the bill with card 4111 1111 1111 1111, reference {i}."),
        ("private hdr", "Summarise my diary entry number {i}."),
    ]
    reqs = []
    for i, (label, text) in enumerate(personal[: 3 + (0 if quick else 2)]):
        body_text = text.format(i=i)
        headers = {"x-edgecloud-sensitivity": "private"} if label == "private hdr" else {}
        marker = body_text.split(" ")[-1] if label != "private hdr" else f"diary entry number {i}"
        if label == "email":
            marker = f"anna.schmidt{i}@example.de"
        if label == "phone":
            marker = f"1381234{i:04d}"
        if label == "id card":
            marker = "11010519491231002X"
        if label == "bank card":
            marker = "4111 1111 1111 1111"
        reqs.append(
            DemoRequest("personal data", label, _chat(body_text, max_tokens), headers, True, marker)
        )
    phases["personal data"] = reqs
    phases["EU-tagged"] = [
        DemoRequest(
            "EU-tagged",
            "eu",
            _chat(f"Translate 'good morning' into German ({i}).", max_tokens),
            {"x-edgecloud-region": "eu"},
        )
        for i in range(n // 2 or 1)
    ] + [
        DemoRequest(
            "EU-tagged",
            "cn",
            _chat(f"Recommend a tea ({i}).", max_tokens),
            {"x-edgecloud-region": "cn"},
            True,
            f"Recommend a tea ({i})",
        )
        for i in range(1)
    ]
    # A phone-screenshot-like PNG, as the phone agent sends (about 0.5 MB quick, 1.5 MB full).
    png = png_bytes(seed=42, target_bytes=500_000 if quick else 1_500_000)
    uri = png_uri(png)
    b64 = uri.partition(",")[2]
    shot = {
        "model": "autoglm-phone-9b",
        "messages": [
            {"role": "system", "content": "You operate the phone for the user."},
            screenshot_turn("Open the settings app. Screen: screenshot-0042", uri),
        ],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    phases["screenshot"] = [
        DemoRequest(
            "screenshot", "screenshot", shot, {}, True, "screenshot-0042", image_markers(b64)
        )
    ]
    phases["burst"] = [
        DemoRequest("burst", "public", _chat(PUBLIC_PROMPTS[i % 6], max_tokens))
        for i in range(8 if quick else 14)
    ]
    return phases
