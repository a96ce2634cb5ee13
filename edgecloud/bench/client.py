"""The load generator's HTTP side: one aiohttp session, pre-encoded bodies, cheap stream reads.

Each call to `RequestSender.send` returns a `RequestRecord`; nothing raises for a bad answer,
the record says what went wrong (`error` kind). Times are `time.perf_counter()` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from edgecloud.bench.results import RequestRecord
from edgecloud.bench.sse import StreamScanner


@dataclass(frozen=True)
class Target:
    """Where requests go: `base_url` ends at the API root (`.../v1`)."""

    base_url: str
    model: str
    api_key: str | None = None
    route: str = "chat"  # chat | completions
    stream: bool = True
    timeout_s: float = 120.0

    @property
    def url(self) -> str:
        path = "/chat/completions" if self.route == "chat" else "/completions"
        return self.base_url.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.stream:
            h["Accept"] = "text/event-stream"
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


def make_session(limit: int, timeout_s: float) -> Any:
    """An aiohttp session with keep-alive; `limit` 0 means as many connections as needed."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=3600)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(10.0, timeout_s)),
        skip_auto_headers=("User-Agent",),
        headers={"User-Agent": "edgecloud-bench"},
        auto_decompress=False,
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class RequestSender:
    """Sends one request and times it; `t0` is the run's zero (perf_counter seconds)."""

    def __init__(self, session: Any, target: Target, t0: float) -> None:
        self.session = session
        self.target = target
        self.url = target.url
        self.headers = target.headers()
        self.t0 = t0

    async def send(
        self, body: bytes, level: float, scheduled: float | None = None
    ) -> RequestRecord:
        """Send now. Open loop passes `scheduled`: latency then counts from the schedule."""
        import aiohttp

        sent = time.perf_counter()
        origin = sent if scheduled is None or scheduled > sent else scheduled
        rec = RequestRecord(
            level=level,
            scheduled_s=None if scheduled is None else round(scheduled - self.t0, 6),
            start_s=round(sent - self.t0, 6),
        )
        try:
            async with self.session.post(self.url, data=body, headers=self.headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    return _fail(rec, f"http_{resp.status}")
                ctype = resp.headers.get("Content-Type", "")
                if "text/event-stream" in ctype:
                    await self._read_stream(resp, rec, origin)
                else:
                    await self._read_json(resp, rec, origin)
        except TimeoutError:
            return _fail(rec, "timeout")
        except aiohttp.ClientConnectorError:
            return _fail(rec, "connect")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            return _fail(rec, "disconnect")
        except aiohttp.ClientError:
            return _fail(rec, "client_error")
        return rec

    async def _read_stream(self, resp: Any, rec: RequestRecord, origin: float) -> None:
        scan = StreamScanner()
        clock = time.perf_counter
        async for data in resp.content.iter_any():
            scan.feed(data, clock())
        end = clock()
        if scan.bad or scan.events == 0:
            _fail(rec, "not_openai")
            return
        if scan.error is not None:
            _fail(rec, "stream_error")
            return
        if not scan.done and scan.usage is None:
            _fail(rec, "stream_incomplete")
            return
        times = scan.token_times
        if times:
            rec.ttft_ms = _ms(times[0] - origin)
            rec.itl_ms = [_ms(b - a) for a, b in zip(times, times[1:], strict=False)]
        rec.e2e_ms = _ms(end - origin)
        _apply_usage(rec, scan.usage, len(times))

    async def _read_json(self, resp: Any, rec: RequestRecord, origin: float) -> None:
        raw = await resp.read()
        end = time.perf_counter()
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            _fail(rec, "not_openai")
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            _fail(rec, "not_openai")
            return
        rec.e2e_ms = _ms(end - origin)
        usage = obj.get("usage")
        _apply_usage(rec, usage if isinstance(usage, dict) else None, len(obj["choices"]))


def _apply_usage(rec: RequestRecord, usage: dict[str, Any] | None, chunks: int) -> None:
    if usage is not None and isinstance(usage.get("completion_tokens"), int):
        rec.output_tokens = usage["completion_tokens"]
        prompt = usage.get("prompt_tokens")
        rec.prompt_tokens = prompt if isinstance(prompt, int) else 0
        rec.token_source = "server_usage"
    else:
        rec.output_tokens = chunks
        rec.token_source = "chunks"


def _fail(rec: RequestRecord, kind: str) -> RequestRecord:
    rec.ok = False
    rec.error = kind
    return rec
