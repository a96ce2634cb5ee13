"""Request sets to replay: built-in workloads and user JSONL files, repeatable with a seed.

A workload is a list of OpenAI request bodies encoded once up front, so the load generator sends
bytes and does no JSON work per request.
"""

from __future__ import annotations

import base64
import random
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from edgecloud.bench.errors import WorkloadError
from edgecloud.bench.results import ImageSet

BUILTIN = ("short-chat", "long-context", "phone-agent")
# A phone agent answers each screenshot with one short action.
PHONE_AGENT_MAX_TOKENS = 16
PHONE_AGENT_BODIES = 21  # distinct request bodies, replayed in turn (about 70 MB encoded)
SCREEN_WIDTH, SCREEN_HEIGHT = 1080, 2400

_TOPICS = (
    "the weather in Lisbon",
    "how a heat pump works",
    "a recipe with lentils",
    "why the sky is blue",
    "the rules of chess castling",
    "how to water a cactus",
    "the history of the bicycle",
    "what a kernel panic is",
    "how tides work",
    "a polite reply to a late invoice",
    "the difference between TCP and UDP",
    "packing for a two-day hike",
)
_WORDS = (
    "system",
    "edge",
    "latency",
    "report",
    "network",
    "device",
    "battery",
    "screen",
    "button",
    "settings",
    "message",
    "contact",
    "calendar",
    "photo",
    "account",
    "payment",
    "order",
    "route",
    "update",
    "storage",
    "signal",
    "window",
    "server",
    "queue",
    "token",
    "model",
    "budget",
)


@dataclass(frozen=True)
class Workload:
    """Named request set: `items` are OpenAI request bodies without model/stream fields."""

    name: str
    route: str  # "chat" (/chat/completions) or "completions" (/completions)
    items: Sequence[dict[str, Any]]
    images: ImageSet | None = None  # what the requests' image parts are, for image workloads
    default_max_tokens: int | None = None  # the workload's own output length, when it has one


def load_workload(name_or_path: str, *, seed: int = 0, size: int = 64) -> Workload:
    """A built-in workload by name, or a JSONL file (one request body per line)."""
    if name_or_path in BUILTIN:
        rng = random.Random(f"{name_or_path}:{seed}")
        if name_or_path == "short-chat":
            return Workload(name_or_path, "chat", [_short_chat(rng) for _ in range(size)])
        if name_or_path == "long-context":
            return Workload(name_or_path, "chat", [_long_context(rng) for _ in range(size)])
        # Screenshots are 1-3 MB each: a handful of distinct ones is enough, and a few dozen
        # bodies (each carries its screenshot) bound the memory the encoded bodies take.
        size = min(size, PHONE_AGENT_BODIES)
        pngs = [png_bytes(seed * 100 + i) for i in range(min(size, 3))]
        shots = [png_uri(p) for p in pngs]
        items = [_agent_turn(rng, shots, i) for i in range(size)]
        used = [len(pngs[i % len(pngs)]) for i in range(size)]
        images = ImageSet(
            per_request=1.0,
            width=SCREEN_WIDTH,
            height=SCREEN_HEIGHT,
            mean_bytes=round(sum(used) / len(used)) if used else 0,
        )
        return Workload(name_or_path, "chat", items, images, PHONE_AGENT_MAX_TOKENS)
    path = Path(name_or_path)
    if not path.exists():
        raise WorkloadError(
            f"workload {name_or_path!r} is neither a built-in ({', '.join(BUILTIN)}) nor a file"
        )
    return _load_jsonl(path)


def _load_jsonl(path: Path) -> Workload:
    items: list[dict[str, Any]] = []
    route = ""
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise WorkloadError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise WorkloadError(f"{path}:{lineno}: each line must be a JSON object")
        if "messages" in obj:
            kind = "chat"
            if not isinstance(obj["messages"], list) or not obj["messages"]:
                raise WorkloadError(f"{path}:{lineno}: field 'messages' must be a non-empty list")
        elif "prompt" in obj:
            kind = "completions"
        else:
            raise WorkloadError(f"{path}:{lineno}: needs a 'messages' (chat) or 'prompt' field")
        if route and kind != route:
            raise WorkloadError(f"{path}:{lineno}: mixes chat and completion requests")
        route = kind
        items.append(obj)
    if not items:
        raise WorkloadError(f"{path}: no requests in the file")
    return Workload(path.name, route, items)


def encode_bodies(workload: Workload, *, model: str, max_tokens: int, stream: bool) -> list[bytes]:
    """Final request bodies as bytes: model, stream, usage in the stream, token limit."""
    bodies = []
    for item in workload.items:
        body = dict(item)
        body["model"] = model
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = max_tokens
        bodies.append(orjson.dumps(body))
    return bodies


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _short_chat(rng: random.Random) -> dict[str, Any]:
    topic = rng.choice(_TOPICS)
    return {"messages": [{"role": "user", "content": f"In two sentences, tell me about {topic}."}]}


def _long_context(rng: random.Random) -> dict[str, Any]:
    # About 1,500 words of notes, then a question about them.
    paragraphs = [_sentence(rng, rng.randint(40, 80)) + "." for _ in range(25)]
    doc = "\n\n".join(paragraphs)
    topic = rng.choice(_TOPICS)
    question = f"Summarise the notes above in three bullet points, then mention {topic}."
    return {
        "messages": [
            {"role": "system", "content": "You are a careful assistant that summarises notes."},
            {"role": "user", "content": f"Notes:\n{doc}\n\n{question}"},
        ]
    }


def screenshot_turn(text: str, image_url: str) -> dict[str, Any]:
    """One user chat message with a text and an image (a URL or a `data:` URI), as the phone
    agent sends a screenshot."""
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image_url}},
        ],
    }


def _agent_turn(rng: random.Random, shots: Sequence[str], i: int) -> dict[str, Any]:
    task = rng.choice(("open the settings", "reply to the last message", "find the order status"))
    system = {"role": "system", "content": "You operate a phone. Answer with one action."}
    text = f"Task: {task}. Step {i % 7 + 1}. What next?"
    return {"messages": [system, screenshot_turn(text, shots[i % len(shots)])]}


def png_bytes(
    seed: int, width: int = SCREEN_WIDTH, height: int = SCREEN_HEIGHT, target_bytes: int = 0
) -> bytes:
    """A deterministic phone-screenshot-like RGB PNG of about `target_bytes` (1-3 MB if 0).

    Flat UI bands compress to almost nothing; rows of seeded noise do not, so the noise height
    sets the file size.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    if target_bytes <= 0:
        target_bytes = int(rng.integers(1_000_000, 3_000_000))
    noise_rows = min(height, max(1, target_bytes // (width * 3)))
    img = np.empty((height, width, 3), dtype=np.uint8)
    band = 120
    for top in range(0, height, band):
        img[top : top + band] = rng.integers(180, 256, size=3, dtype=np.uint8)
    start = int(rng.integers(0, height - noise_rows + 1))
    img[start : start + noise_rows] = rng.integers(
        0, 256, size=(noise_rows, width, 3), dtype=np.uint8
    )
    raw = np.zeros((height, width * 3 + 1), dtype=np.uint8)  # filter byte 0 per row
    raw[:, 1:] = img.reshape(height, width * 3)
    return _png(width, height, zlib.compress(raw.tobytes(), 1))


def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_data_uri(seed: int) -> str:
    """`png_bytes(seed)` as a `data:image/png;base64,...` URI."""
    return png_uri(png_bytes(seed))


def png_uri(png: bytes) -> str:
    """A PNG as a `data:image/png;base64,...` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
