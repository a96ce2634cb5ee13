"""Send demo requests through the gateway and record where each ran, why, and how fast."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import orjson

from edgecloud.bench.sse import StreamScanner
from edgecloud.demo.scenario import DemoRequest


@dataclass
class Outcome:
    """What happened to one demo request."""

    phase: str
    kind: str
    private: bool
    status: int
    placement: str  # edge | cloud | refused | error
    endpoint: str
    reason: str
    ttft_ms: float | None
    e2e_ms: float
    sent_at_s: float  # since the demo started
    error: str = ""
    text: str = ""
    prompt_tokens: int | None = None  # from the answer's usage (image tokens included)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def send(client: httpx.AsyncClient, base: str, req: DemoRequest, t0: float) -> Outcome:
    """One request through the gateway at `base` (…/v1); streams are read to the end."""
    start = time.perf_counter()
    ttft: float | None = None
    texts: list[str] = []
    error = ""
    status = 0
    headers: httpx.Headers = httpx.Headers()
    prompt_tokens: int | None = None
    try:
        async with client.stream(
            "POST",
            f"{base}/chat/completions",
            content=orjson.dumps(req.body),
            headers={"content-type": "application/json", **req.headers},
        ) as resp:
            status = resp.status_code
            headers = resp.headers
            if status != 200:
                raw = await resp.aread()
                try:
                    err = orjson.loads(raw)["error"]
                    error = f"{err.get('code') or err.get('type')}: {err.get('message', '')}"
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    error = raw[:200].decode("utf-8", "replace")
            elif req.body.get("stream"):
                scan = StreamScanner(collect_text=True)
                async for data in resp.aiter_bytes():
                    scan.feed(data, time.perf_counter())
                error = scan.error or ""
                if scan.token_times:
                    ttft = (scan.token_times[0] - start) * 1000
                texts = scan.texts or []
                if scan.usage and isinstance(scan.usage.get("prompt_tokens"), int):
                    prompt_tokens = scan.usage["prompt_tokens"]
            else:
                data = orjson.loads(await resp.aread())
                ttft = (time.perf_counter() - start) * 1000
                prompt_tokens = (data.get("usage") or {}).get("prompt_tokens")
                texts.append(data["choices"][0]["message"]["content"] or "")
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    e2e = (time.perf_counter() - start) * 1000
    placement = headers.get("x-edgecloud-placement") or ""
    if status == 200 and error:
        placement = placement or "error"
    elif status != 200:
        placement = "refused" if status in (503, 404, 400, 413, 429) else "error"
    return Outcome(
        phase=req.phase,
        kind=req.kind,
        private=req.private,
        status=status,
        placement=placement,
        endpoint=headers.get("x-edgecloud-endpoint") or "-",
        reason=headers.get("x-edgecloud-reason") or (error.split(":")[0] if error else "-"),
        ttft_ms=ttft,
        e2e_ms=e2e,
        sent_at_s=start - t0,
        error=error[:300],
        text="".join(texts)[:120],
        prompt_tokens=prompt_tokens,
    )
