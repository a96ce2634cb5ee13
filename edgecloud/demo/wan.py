"""An emulated wide-area link: a TCP proxy that adds round-trip time, jitter and a bandwidth cap.

The demo puts its "cloud" node behind one so that placement decisions see a real network cost.
It is labelled as emulated everywhere it appears; it is not a network simulator (no loss).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass


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

    def __init__(self, profile: LinkProfile, rng: random.Random) -> None:
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
                queue.put_nowait((self.due(len(data)), data))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            queue.put_nowait((time.monotonic(), b""))
            try:
                await task
            except (ConnectionError, OSError):
                pass


class WanLink:
    """Listen on `listen_port`; forward to `target_host:target_port` through the profile."""

    def __init__(
        self, target_host: str, target_port: int, profile: LinkProfile, seed: int = 7
    ) -> None:
        self.target = (target_host, target_port)
        self.profile = profile
        self.rng = random.Random(seed)
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._handle, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            _Pipe(self.profile, self.rng).pump(client_r, up_w),
            _Pipe(self.profile, self.rng).pump(up_r, client_w),
            return_exceptions=True,
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
