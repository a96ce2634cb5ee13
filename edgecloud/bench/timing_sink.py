"""The load generator's timing sink: a response sink on the shared HTTP/1.1 client core
(`edgecloud/http1.py`) that times what arrives.

On a 2-core edge box the measuring tool must stay out of the way: the connection skeleton is
`edgecloud.http1` (pooled keep-alive connections, httptools callbacks, TLS), and this module only
times what arrives. A request is one `write` of bytes built once; a streamed answer is scanned in
place as it arrives, and the exchange ends in a `RequestRecord` without a coroutine per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson

from edgecloud.bench.results import RequestRecord
from edgecloud.bench.sse import StreamScanner, chunk_text
from edgecloud.http1 import Connection, ProtocolError, UpstreamError

Done = Callable[[RequestRecord], None]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class TimedOut(UpstreamError):
    """No complete answer within the target's timeout."""


class Exchange:
    """One request in flight: the sink that records its timing and what the answer taught us."""

    __slots__ = (
        "rec",
        "origin",
        "done",
        "status",
        "sse",
        "scan",
        "chunks",
        "timer",
        "finished",
        "text_sink",
        "conn",
    )

    def __init__(
        self, rec: RequestRecord, origin: float, done: Done, text_sink: dict[int, str] | None = None
    ) -> None:
        self.rec = rec
        self.origin = origin
        self.done = done
        self.status = 0
        self.sse = False
        self.scan: StreamScanner | None = None
        self.chunks: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None
        self.finished = False
        self.text_sink = text_sink  # id(record) -> generated text, for a tokenizer to count
        self.conn: Connection | None = None

    def send(self, conn: Connection, data: bytes, timeout_s: float,
             loop: asyncio.AbstractEventLoop) -> None:
        """Write the request on `conn`; the answer comes back through the sink callbacks."""
        self.conn = conn
        self.timer = loop.call_later(timeout_s, conn.fail, TimedOut("timeout"))
        conn.start(self, data)

    # -- ResponseSink ---------------------------------------------------------------------------
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        for name, value in headers:
            if len(name) == 12 and name.lower() == b"content-type":
                self.sse = b"text/event-stream" in value
        if self.sse and status == 200:
            self.scan = StreamScanner(collect_text=self.text_sink is not None)

    def on_body(self, data: bytes) -> None:
        if self.scan is not None:
            self.scan.feed(data, time.perf_counter())
        elif self.status == 200:
            self.chunks.append(data)

    def on_complete(self, keep_alive: bool) -> None:
        self.finish(None, time.perf_counter())
        if self.conn is not None:
            self.conn.release(keep_alive)

    def on_error(self, exc: UpstreamError) -> None:
        kind = ("timeout" if isinstance(exc, TimedOut)
                else "not_openai" if isinstance(exc, ProtocolError) else "disconnect")
        self.finish(kind, time.perf_counter())

    # -- the record -----------------------------------------------------------------------------
    def finish(self, error: str | None, end: float) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        rec = self.rec
        if error is None:
            error = self._complete(end)
        if error is not None:
            rec.ok = False
            rec.error = error
        self.done(rec)

    def _complete(self, end: float) -> str | None:
        rec = self.rec
        if self.status != 200:
            return f"http_{self.status}"
        if self.scan is not None:
            scan = self.scan
            if scan.bad or scan.events == 0:
                return "not_openai"
            if scan.error is not None:
                return "stream_error"
            if not scan.done and scan.usage is None:
                return "stream_incomplete"
            times = scan.token_times
            if times:
                rec.ttft_ms = _ms(times[0] - self.origin)
                rec.itl_ms = [_ms(b - a) for a, b in zip(times, times[1:], strict=False)]
            rec.e2e_ms = _ms(end - self.origin)
            _apply_usage(rec, scan.usage, len(times))
            _apply_timings(rec, scan.timings)
            if self.text_sink is not None and scan.usage is None and scan.texts is not None:
                self.text_sink[id(rec)] = "".join(scan.texts)
            return None
        try:
            obj = orjson.loads(b"".join(self.chunks))
        except orjson.JSONDecodeError:
            return "not_openai"
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return "not_openai"
        rec.e2e_ms = _ms(end - self.origin)
        usage = obj.get("usage")
        _apply_usage(rec, usage if isinstance(usage, dict) else None, len(obj["choices"]))
        timings = obj.get("timings")
        _apply_timings(rec, timings if isinstance(timings, dict) else None)
        if self.text_sink is not None and not isinstance(usage, dict):
            self.text_sink[id(rec)] = chunk_text(b"".join(self.chunks))
        return None


def _apply_timings(rec: RequestRecord, timings: dict[str, Any] | None) -> None:
    """The request's own image count and time, where the server's `timings` say them."""
    if timings is None:
        return
    n, ms = timings.get("images_n"), timings.get("images_ms")
    if isinstance(n, int) and n > 0 and isinstance(ms, (int, float)) and ms >= 0:
        rec.server_images, rec.server_image_ms = n, float(ms)


def _apply_usage(rec: RequestRecord, usage: dict[str, Any] | None, chunks: int) -> None:
    if usage is not None and isinstance(usage.get("completion_tokens"), int):
        rec.output_tokens = usage["completion_tokens"]
        prompt = usage.get("prompt_tokens")
        rec.prompt_tokens = prompt if isinstance(prompt, int) else 0
        rec.token_source = "server_usage"
    else:
        rec.output_tokens = chunks
        rec.token_source = "chunks"
