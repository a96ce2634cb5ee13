"""A stand-in for a remote OpenAI-compatible provider, with latency we control.

Run: python -m edgecloud.testing.standin_openai --port P [options]. Raw ASGI on uvicorn (uvloop,
httptools), so it is fast enough to be the "fast stand-in" of the generator benchmark too.

Behaviours (all optional):
- --ttft-ms LIST: comma-separated delays before the first token; request k (in arrival order)
  gets LIST[k % len(LIST)], so n requests see exactly the injected distribution.
- --tokens N --itl-ms G: N content chunks, G ms apart after the first.
- --capacity K --service-ms S: at most K requests served at once, each takes S ms (a server
  with a known capacity of K * 1000 / S requests/s).
- --stall-after-s A --stall-s D: A seconds after the first request, hold every answer for D s.
- --mode ok|unauthorized|html|hang: a bad target (401, a web page, never answers).
- --no-usage: never report `usage` (the client must count tokens itself).
- Image parts (`image_url`) are read: each counts IMAGE_TOKENS prompt tokens in `usage`.
  --image-ms M: each image takes M ms, one image at a time (like one engine), and `/metrics`
  publishes the node's image counters (images read, seconds spent), as an edgecloud vision node
  does. Without it there is no `/metrics` (a server that reports no image time).
- --answer-timings: no `/metrics`, but every answer carries the node's `timings` object with
  its images and their time (a vision node behind a gateway, whose counters the client cannot
  read); streams put it on a finishing chunk, as the node does.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson

from edgecloud.api import replies
from edgecloud.api.asgi import SSE_DONE, lifespan, read_body, send_error, sse_event
from edgecloud.api.errors import NotFound, Unauthorized
from edgecloud.api.replies import Reply

MODEL = "standin-model"
IMAGE_TOKENS = 256  # what one image costs in prompt tokens (Gemma 3's projector: 256)
TEXT_TOKENS = 7


class StandIn:
    def __init__(self, args: argparse.Namespace) -> None:
        self.delays = [float(x) / 1000.0 for x in args.ttft_ms.split(",")] if args.ttft_ms else []
        self.tokens = args.tokens
        self.itl = args.itl_ms / 1000.0
        self.service = args.service_ms / 1000.0
        self.sem = asyncio.Semaphore(args.capacity) if args.capacity else None
        self.stall_after = args.stall_after_s
        self.stall_s = args.stall_s
        self.mode = args.mode
        self.usage = not args.no_usage
        self.image_s = args.image_ms / 1000.0
        self.answer_timings = args.answer_timings
        self.encoder = asyncio.Lock()  # one image at a time
        self.images_read = 0
        self.image_seconds = 0.0
        self.count = 0
        self.first: float | None = None
        # What the server really did (ms from the request's arrival): the truth the tests
        # compare the client's figures with, machine noise included.
        self.seen_ttft_ms: list[float] = []
        self.seen_e2e_ms: list[float] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, _nothing, _nothing)
            return
        path = scope["path"]
        if path == "/healthz":  # the test fixture's readiness probe works in every mode
            await _send(send, 200, b'{"status":"ok"}')
            return
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "html":
            await _send(send, 200, b"<html><body>Welcome to nginx!</body></html>", b"text/html")
            return
        if self.mode == "unauthorized":
            await send_error(send, Unauthorized("Invalid API key"))
            return
        if path in ("/healthz", "/readyz"):
            await _send(send, 200, b'{"status":"ok"}')
        elif path == "/stats":
            await _send(
                send,
                200,
                orjson.dumps(
                    {
                        "requests": self.count,
                        "ttft_ms": self.seen_ttft_ms,
                        "e2e_ms": self.seen_e2e_ms,
                    }
                ),
            )
        elif path == "/metrics" and self.image_s and not self.answer_timings:
            text = (
                "# TYPE edgecloud_node_images_total counter\n"
                f"edgecloud_node_images_total {float(self.images_read)}\n"
                "# TYPE edgecloud_node_image_seconds_total counter\n"
                f"edgecloud_node_image_seconds_total {self.image_seconds}\n"
            )
            await _send(send, 200, text.encode(), b"text/plain; version=0.0.4")
        elif path == "/v1/models":
            await _send(
                send,
                200,
                orjson.dumps(
                    {
                        "object": "list",
                        "data": [{"id": MODEL, "object": "model", "owned_by": "standin"}],
                    }
                ),
            )
        elif path in ("/v1/chat/completions", "/v1/completions"):
            body = orjson.loads(await read_body(receive, 64 << 20))
            await self.complete(body, send, chat=path.endswith("chat/completions"))
        else:
            await send_error(send, NotFound("not found"))

    async def complete(self, body: dict[str, Any], send: Any, *, chat: bool) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        k = self.count
        self.count += 1
        if self.stall_s:
            start = self.first + self.stall_after
            if start <= now < start + self.stall_s:
                await asyncio.sleep(start + self.stall_s - now)
        if self.sem is not None:
            async with self.sem:
                await asyncio.sleep(self.service)
        images = _count_images(body) if chat else 0
        for _ in range(images):
            async with self.encoder:
                if self.image_s:
                    await _sleep_until(time.perf_counter() + self.image_s)
                self.images_read += 1
                self.image_seconds += self.image_s  # the time it says an image takes
        if self.delays:
            await _sleep_until(time.perf_counter() + self.delays[k % len(self.delays)])
        n = min(
            self.tokens,
            int(body.get("max_tokens") or body.get("max_completion_tokens") or self.tokens),
        )
        prompt = TEXT_TOKENS + IMAGE_TOKENS * images
        usage = replies.usage(prompt, n) if self.usage else None
        reply = Reply(MODEL, chat=chat, reply_id="x", created=0, fingerprint=None)
        timings = ({"predicted_n": n, "images_n": images, "images_ms": self.image_s * 1000.0}
                   if self.answer_timings and images else None)
        if not body.get("stream"):
            whole = reply.completion(" tok" * n, "length", usage)
            if timings is not None:
                whole["timings"] = timings
            await _send(send, 200, orjson.dumps(whole))
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        first = time.perf_counter()
        self.seen_ttft_ms.append((first - now) * 1000.0)
        for i in range(n):
            if i and self.itl:
                # Absolute deadlines: timer overshoot does not add up over the tokens.
                await _sleep_until(first + i * self.itl)
            await send(
                {"type": "http.response.body", "body": sse_event(reply.chunk(" tok")),
                 "more_body": True}
            )
        tail = b""
        if timings is not None:
            tail += sse_event({**reply.chunk(None, "length"), "timings": timings})
        if usage is not None and (body.get("stream_options") or {}).get("include_usage"):
            tail += sse_event(reply.usage_chunk(usage))
        await send({"type": "http.response.body", "body": tail + SSE_DONE})
        self.seen_e2e_ms.append((time.perf_counter() - now) * 1000.0)


def _count_images(body: dict[str, Any]) -> int:
    """Image parts in a chat body (a stand-in: it checks the shape, not the pixels)."""
    n = 0
    for msg in body.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    if isinstance(url, str) and url.startswith("data:image/"):
                        n += 1
    return n


async def _nothing() -> None:
    pass


async def _sleep_until(deadline: float) -> None:
    # The loop's timers are millisecond-grained and fire late; aim half a millisecond early.
    delay = deadline - time.perf_counter() - 0.0005
    if delay > 0:
        await asyncio.sleep(delay)


async def _send(send: Any, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ttft-ms", default="")
    p.add_argument("--tokens", type=int, default=4)
    p.add_argument("--itl-ms", type=float, default=0.0)
    p.add_argument("--capacity", type=int, default=0)
    p.add_argument("--service-ms", type=float, default=0.0)
    p.add_argument("--stall-after-s", type=float, default=0.0)
    p.add_argument("--stall-s", type=float, default=0.0)
    p.add_argument("--no-usage", action="store_true", help="never report usage")
    p.add_argument("--image-ms", type=float, default=0.0, help="time per image; adds /metrics")
    p.add_argument("--answer-timings", action="store_true",
                   help="image time in each answer's `timings`, no /metrics")
    p.add_argument("--mode", default="ok", choices=["ok", "unauthorized", "html", "hang"])
    args = p.parse_args()
    import uvicorn

    uvicorn.run(
        StandIn(args),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
