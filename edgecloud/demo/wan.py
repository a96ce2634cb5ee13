"""An emulated wide-area link: a TCP proxy that adds round-trip time, jitter and a bandwidth cap.

The demo puts its "cloud" node behind one so that placement decisions see a real network cost.
It is labelled as emulated everywhere it appears; it is not a network simulator (no loss).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LinkProfile:
    """What the link adds. Delay is split evenly between the two directions."""

    rtt_ms: float = 60.0
    jitter_ms: float = 5.0
    bandwidth_mbit: float = 50.0

    def describe(self) -> str:
        return (
            f"emulated WAN: RTT {self.rtt_ms:.0f} ms ± {self.jitter_ms:.0f} ms, "
            f"{self.bandwidth_mbit:.0f} Mbit/s"
        )


class _Pipe:
    """One direction: chunks leave in order, each after the one-way delay and the bandwidth."""

    def __init__(
        self, profile: LinkProfile, rng: random.Random, tap: MarkerTap | None = None
    ) -> None:
        self.tap = tap
        self.one_way_s = profile.rtt_ms / 2000.0
        self.jitter_s = profile.jitter_ms / 2000.0
        self.bytes_per_s = profile.bandwidth_mbit * 125_000.0
        self.rng = rng
        self.free_at = 0.0  # when the link finishes sending what is already queued

    def due(self, size: int) -> float:
        now = time.monotonic()
        start = max(now, self.free_at)
        self.free_at = start + size / self.bytes_per_s
        jitter = self.rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0
        return self.free_at + max(0.0, self.one_way_s + jitter)

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            last = 0.0
            while True:
                due, data = await queue.get()
                due = max(due, last)  # keep order even when jitter would reorder
                last = due
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                if self.tap is not None:
                    self.tap.feed(data)
                queue.put_nowait((self.due(len(data)), data))
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            queue.put_nowait((time.monotonic(), b""))
            try:
                await task
            except (ConnectionError, OSError):
                pass


class MarkerTap:
    """Counts how often given strings crossed the link towards the far side (a privacy audit)."""

    def __init__(self, markers: list[str]) -> None:
        self.markers = [m.encode() for m in markers if m]
        self.keep = max((len(m) for m in self.markers), default=1) - 1
        self.hits: dict[str, int] = {}
        self.bytes_seen = 0
        self._tail = b""

    def feed(self, data: bytes) -> None:
        self.bytes_seen += len(data)
        window = self._tail + data
        for m in self.markers:
            # Count only matches that end inside the new data (the tail was searched before).
            start = max(0, len(self._tail) - len(m) + 1)
            if window.find(m, start) >= 0:
                key = m.decode()
                self.hits[key] = self.hits.get(key, 0) + window.count(m, start)
        self._tail = window[-self.keep :] if self.keep else b""


class WanLink:
    """Listen on a port; forward to `target_host:target_port` through the profile.

    Runs its own event loop on a thread, so the link keeps its pace whatever the caller does.
    `cut()` drops the link (every connection, and the listener) until `restore()`.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        profile: LinkProfile,
        tap: MarkerTap | None = None,
        seed: int = 7,
    ) -> None:
        self.target = (target_host, target_port)
        self.profile = profile
        self.tap = tap
        self.rng = random.Random(seed)
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wan-link", daemon=True)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._thread.start()
        self._host = host
        self.port = self._call(self._listen(port))
        return self.port

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen(self.port))

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, self._host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, up_w))
        await asyncio.gather(
            _Pipe(self.profile, self.rng, self.tap).pump(client_r, up_w),
            _Pipe(self.profile, self.rng).pump(up_r, client_w),
            return_exceptions=True,
        )
        self._writers.difference_update((client_w, up_w))
