"""The agent's HTTP client: every request held to its `TransferLimits`, headers included.

A read timeout never fires on a link that delivers a byte now and then, and a server can spend
a long time on the headers alone. So the limits are checked where bytes arrive: a network
backend (httpcore's seam for sockets) counts every read against the guard of the transfer
under way (`within(limits)`), whatever part of the answer it belongs to.
"""

from __future__ import annotations

import ssl
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import httpcore
import httpx

from edgecloud.fleet.errors import TransferTooSlow


@dataclass(frozen=True)
class TransferLimits:
    """How long one download may take, and the slowest rate it may keep up.

    A deadline bounds a download that keeps trickling; the minimum rate, checked over each
    `window_s`, cuts a link that delivers a byte now and then (which no read timeout
    notices). A cut target download resumes from its bytes on the next poll.
    """

    deadline_s: float = 3600.0
    min_bps: float = 1024.0
    window_s: float = 30.0

    def timeout(self) -> httpx.Timeout:
        """Per-operation timeouts: a silent link is cut within one window."""
        return httpx.Timeout(self.window_s, connect=min(10.0, self.window_s))


class TransferGuard:
    """Checks one transfer against its `TransferLimits` as bytes arrive (pure: the clock is
    passed in)."""

    def __init__(self, limits: TransferLimits, now: float) -> None:
        self.limits = limits
        self.started = now
        self.window_started = now
        self.window_bytes = 0

    def feed(self, n: int, now: float) -> None:
        """Count `n` bytes received at `now`; raises TransferTooSlow past a limit."""
        lim = self.limits
        if now - self.started > lim.deadline_s:
            raise TransferTooSlow("download_deadline", f"not done within {lim.deadline_s:g} s")
        self.window_bytes += n
        if now - self.window_started >= lim.window_s:
            rate = self.window_bytes / (now - self.window_started)
            if rate < lim.min_bps:
                raise TransferTooSlow(
                    "download_too_slow", f"{rate:.0f} B/s is below the minimum {lim.min_bps:g} B/s"
                )
            self.window_started, self.window_bytes = now, 0


_guard: ContextVar[TransferGuard | None] = ContextVar("edgecloud_transfer_guard", default=None)


@contextmanager
def within(limits: TransferLimits) -> Iterator[TransferGuard]:
    """Hold the requests made inside to `limits` (TransferTooSlow past them)."""
    token = _guard.set(TransferGuard(limits, time.monotonic()))
    try:
        yield typing.cast(TransferGuard, _guard.get())
    finally:
        _guard.reset(token)


class _GuardedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, timeout)
        guard = _guard.get()
        if guard is not None:
            guard.feed(len(data), time.monotonic())
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _GuardedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _GuardedStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _GuardedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def agent_client(limits: TransferLimits, verify: ssl.SSLContext | bool = True) -> httpx.Client:
    """An httpx client whose reads count against the guard of `within()`."""
    transport = httpx.HTTPTransport(verify=verify)
    # httpx builds its httpcore pool itself; its network backend is the seam for the sockets
    pool = transport._pool
    pool._network_backend = _GuardedBackend(pool._network_backend)
    return httpx.Client(transport=transport, timeout=limits.timeout())
