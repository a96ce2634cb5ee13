"""A STAND-IN for a bad network between an agent and the fleet server: a TCP proxy on
127.0.0.1 that passes bytes through, or drops, garbles or trickles the server's answers.

A fault applies to every connection, or (with `match`) only once the client sent a request
containing `match` on that connection (e.g. b"GET /tuf/targets/" to hit model downloads and
leave metadata alone). Change the fault at any time with `set()`; it applies to bytes that
flow from then on.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Literal

Mode = Literal["pass", "drop", "garble", "trickle"]


@dataclass(frozen=True)
class Fault:
    mode: Mode = "pass"
    match: bytes = b""
    after: int = 0  # answer bytes passed through untouched before the fault starts
    trickle_s: float = 0.05  # seconds per byte when trickling


class FaultyLink:
    """Run with `with FaultyLink(upstream_port) as link:`; agents use `link.url`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fault = Fault()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faulty-link", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: Mode, **kw: object) -> None:
        self.fault = Fault(mode, **kw)  # type: ignore[arg-type]

    def __enter__(self) -> FaultyLink:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the faulty link did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            c_writer.close()
            return
        seen = {"matched": False}

        async def upstream() -> None:
            while data := await c_reader.read(65536):
                if self.fault.match and self.fault.match in data:
                    seen["matched"] = True
                s_writer.write(data)
                await s_writer.drain()

        async def downstream() -> None:
            sent = 0
            while data := await s_reader.read(65536):
                fault = self.fault
                hit = fault.mode != "pass" and (not fault.match or seen["matched"])
                if hit and sent + len(data) > fault.after:
                    keep = max(0, fault.after - sent)
                    c_writer.write(data[:keep])
                    sent += keep
                    data = data[keep:]
                    if fault.mode == "drop":
                        await c_writer.drain()
                        return
                    if fault.mode == "garble":
                        data = bytes(b ^ 0x5A for b in data)
                    elif fault.mode == "trickle":
                        for i in range(len(data)):
                            c_writer.write(data[i : i + 1])
                            await c_writer.drain()
                            await asyncio.sleep(fault.trickle_s)
                        sent += len(data)
                        continue
                c_writer.write(data)
                sent += len(data)
                await c_writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (c_writer, s_writer):
                w.close()
