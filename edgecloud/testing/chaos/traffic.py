"""Mixed traffic through the OpenAI SDK, each request classified by what came back.

Every request carries a marker (a unique token in its text) whose prefix names its kind, so the
cloud side, which records what it received, can tell a leak from allowed traffic.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai

# kind -> (marker prefix, extra headers, where it may be served: endpoint names or None = any)
EDGE = "edge-local"
CLOUD_EU = "cloud-eu"
CLOUD_US = "cloud-us"

KINDS: dict[str, tuple[str, dict[str, str], frozenset[str] | None]] = {
    "public": ("zqU", {}, None),
    "public_cloud": ("zqK", {"x-edgecloud-placement": "cloud"}, None),
    "private": ("zqP", {"x-edgecloud-sensitivity": "private"}, frozenset({EDGE})),
    "pii": ("zqM", {}, frozenset({EDGE})),
    "eu": ("zqE", {"x-edgecloud-region": "eu", "x-edgecloud-placement": "cloud"},
           frozenset({EDGE, CLOUD_EU})),
    "cn": ("zqC", {"x-edgecloud-region": "cn"}, frozenset({EDGE})),
    "screenshot": ("zqI", {}, frozenset({EDGE})),
}
# Markers that must never reach a given cloud endpoint.
FORBIDDEN_AT = {
    CLOUD_EU: ("zqP", "zqM", "zqC", "zqI"),
    CLOUD_US: ("zqP", "zqM", "zqC", "zqI", "zqE"),
}
MARKER_RE = rb"zq[UKPMECI][0-9a-f]{10}"

# A 1x1 PNG: a screenshot as far as the policy is concerned.
_PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc000000301010018dd8db00000000049454e44ae426082"
)).decode()


def marker(kind: str) -> str:
    return KINDS[kind][0] + secrets.token_hex(5)


def messages(kind: str, mark: str) -> list[dict[str, Any]]:
    text = f"Reply with one word. Ref {mark}."
    if kind == "pii":
        text = f"Write to {mark}@example.com about the invoice."
    if kind == "screenshot":
        return [{"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _PNG}}]}]
    return [{"role": "user", "content": text}]


@dataclass
class Outcome:
    kind: str
    marker: str
    stream: bool
    result: str  # "served" | "refused" | "failed"
    status: int | None
    endpoint: str | None
    latency_s: float
    detail: str = ""

    @property
    def wrong_placement(self) -> bool:
        allowed = KINDS[self.kind][2]
        return (self.result == "served" and allowed is not None
                and self.endpoint not in allowed)


def send_one(client: openai.OpenAI, model: str, kind: str, stream: bool,
             max_tokens: int = 6) -> Outcome:
    """One request through the SDK; never raises."""
    mark = marker(kind)
    headers = KINDS[kind][1]
    t0 = time.monotonic()
    status: int | None = None
    endpoint: str | None = None
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages(kind, mark),  # type: ignore[arg-type]
            max_tokens=max_tokens, temperature=0, stream=stream, extra_headers=headers)
        status = raw.status_code
        endpoint = raw.headers.get("x-edgecloud-endpoint")
        parsed: Any = raw.parse()
        if stream:
            # Iteration ends at [DONE]; a cut stream raises, an error event raises APIError.
            if not any(True for _ in parsed):
                return Outcome(kind, mark, stream, "failed", status, endpoint,
                               time.monotonic() - t0, "empty stream")
        elif not parsed.choices:
            return Outcome(kind, mark, stream, "failed", status, endpoint,
                           time.monotonic() - t0, "no choices")
        return Outcome(kind, mark, stream, "served", status, endpoint, time.monotonic() - t0)
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else None
        enveloped = body is not None and ("message" in body or "error" in body)
        ok = enveloped and exc.status_code != 500
        return Outcome(kind, mark, stream, "refused" if ok else "failed", exc.status_code,
                       exc.response.headers.get("x-edgecloud-endpoint"), time.monotonic() - t0,
                       f"{exc.status_code} {str(exc.message)[:80]}")
    except openai.APIError as exc:  # a stream that carried an error event is a refusal
        return Outcome(kind, mark, stream, "refused" if status == 200 else "failed", status,
                       endpoint, time.monotonic() - t0, f"{type(exc).__name__}: {exc}"[:100])
    except Exception as exc:  # noqa: BLE001 - transport errors, broken streams
        return Outcome(kind, mark, stream, "failed", status, endpoint, time.monotonic() - t0,
                       f"{type(exc).__name__}: {exc}"[:100])


@dataclass
class TrafficStats:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, o: Outcome) -> None:
        with self.lock:
            self.outcomes.append(o)

    def take(self) -> list[Outcome]:
        with self.lock:
            out, self.outcomes = self.outcomes, []
        return out


@dataclass
class MixedTraffic:
    """`workers` threads sending a rotating mix of kinds, streamed and not, until stopped."""

    base_url: str
    model: str
    workers: int = 3
    timeout_s: float = 30.0
    pause_s: float = 0.05
    kinds: tuple[str, ...] = tuple(KINDS)
    stats: TrafficStats = field(default_factory=TrafficStats)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="chaos", max_retries=0,
                             timeout=self.timeout_s)

    def start(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"traffic-{i}")
                         for i in range(self.workers)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)

    def _run(self) -> None:
        client = self.client()
        try:
            while not self._stop.is_set():
                n = next(self._counter)
                kind = self.kinds[n % len(self.kinds)]
                self.stats.add(send_one(client, self.model, kind, stream=(n // 7) % 2 == 0))
                self._stop.wait(self.pause_s)
        finally:
            client.close()


def timed_requests(send: Callable[[], Outcome], n: int) -> list[float]:
    """Latencies of `n` requests sent one after another (served ones only)."""
    out = []
    for _ in range(n):
        o = send()
        if o.result == "served":
            out.append(o.latency_s)
    return out
