"""The gateway's upstream HTTP/1.1 client against raw TCP servers on 127.0.0.1 that play an
upstream's wire behaviour byte for byte (keep-alive, chunks, close-delimited bodies, a server
that drops idle connections, garbage, hangs, TLS)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edgecloud.http1 import H1Pool, UpstreamError
from tests.gateway.test_gateway_config import _self_signed

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, int]], Awaitable[None]]

JSON = b'{"ok":true}'


async def _request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head + content-length body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    return head + (await reader.readexactly(n) if n else b"")


def _ok(body: bytes = JSON, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + extra
            + b"content-length: %d\r\n\r\n" % len(body) + body)


def _serve(handler: Handler, test: Callable[[H1Pool, dict[str, int]], Awaitable[None]],
           tls: ssl.SSLContext | None = None, **pool_kw: Any) -> None:
    """Serve `handler` on a free port and run `test` with a pool to it (closed at the end) and
    the server's counts of connections and requests."""

    async def main() -> None:
        stats = {"connections": 0, "requests": 0}

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            stats["connections"] += 1
            try:
                await handler(r, w, stats)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=tls)
        port = server.sockets[0].getsockname()[1]
        scheme = "https" if tls else "http"
        pool = _pool(f"{scheme}://127.0.0.1:{port}", **pool_kw)
        try:
            async with asyncio.timeout(20):
                await test(pool, stats)
        finally:
                server.close()

    asyncio.run(main())


def _pool(url: str, **kw: Any) -> H1Pool:
    return H1Pool(url, {"content-type": "application/json"}, connect_timeout_s=2, **kw)


async def _keep_alive(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                      stats: dict[str, int]) -> None:
    while (req := await _request(r)) is not None:
        stats["requests"] += 1
        assert req.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:" in req and req.endswith(b'{"q":1}')
        w.write(_ok())
        await w.drain()


def test_keep_alive_reuses_one_connection() -> None:
    async def test(pool: H1Pool, stats: dict[str, int]) -> None:
        for _ in range(5):
            resp = await pool.request(b"POST", b"/v1/chat/completions", b'{"q":1}')
            assert resp.status == 200 and await resp.read() == JSON
            assert (b"content-type", b"application/json") in resp.raw_headers
        assert stats == {"connections": 1, "requests": 5}

    _serve(_keep_alive, test)


def test_chunked_stream_arrives_piece_by_piece_and_in_order() -> None:
    parts = [b"data: %d\n\n" % i for i in range(20)]

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, _: Any) -> None:
        await _request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n")
        for p in parts:
            w.write(b"%x\r\n%s\r\n" % (len(p), p))
            await w.drain()
            await asyncio.sleep(0.005)
        w.write(b"0\r\n\r\n")
        await w.drain()
        await _request(r)  # keep the connection open until the client is done

    async def test(pool: H1Pool, stats: dict[str, int]) -> None:
        resp = await pool.request(b"POST", b"/v1/chat/completions", b"{}")
        got = [chunk async for chunk in resp.iter_any()]
        assert b"".join(got) == b"".join(parts)
        assert len(got) > 5  # handed over as it came, not buffered to the end
        assert len(pool._idle) == 1  # a clean end: the connection is kept

    _serve(handler, test)


def test_body_delimited_by_connection_close() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, _: Any) -> None:
        await _request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n")
        w.write(b'{"long":"' + b"x" * 100_000 + b'"}')
        await w.drain()

    async def test(pool: H1Pool, stats: dict[str, int]) -> None:
        resp = await pool.request(b"POST", b"/v1/completions", b"{}")
        data = await resp.read()
        assert len(data) == 100_011 and data.endswith(b'"}')
        assert not pool._idle  # not reusable

    _serve(handler, test)


@pytest.mark.parametrize("close", ["after_the_answer", "at_the_next_request"])
def test_a_connection_the_server_dropped_is_retried_on_a_new_one(close: str) -> None:
    """The server answers one request per connection, keep-alive by the headers, and closes
    right after its answer or only when the next request arrives (that one is dropped)."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                      stats: dict[str, int]) -> None:
        await _request(r)
        stats["requests"] += 1
        w.write(_ok())
        await w.drain()
        if close == "at_the_next_request":
            await _request(r)  # the second request on this connection: dropped unanswered

    async def test(pool: H1Pool, stats: dict[str, int]) -> None:
        for _ in range(3):
            resp = await pool.request(b"POST", b"/v1/chat/completions", b"{}")
            assert await resp.read() == JSON
            if close == "after_the_answer":
                await asyncio.sleep(0.05)  # the close reaches the client (usually)
        assert stats["requests"] == 3 and stats["connections"] == 3

    _serve(handler, test)


def test_cut_mid_body_is_an_error_and_the_connection_is_not_reused() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, _: Any) -> None:
        await _request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        await w.drain()

    async def test(pool: H1Pool, stats: dict[str, int]) -> None:
        resp = await pool.request(b"POST", b"/v1/completions", b"{}")
        with pytest.raises(UpstreamError):
            await resp.read()
        assert not pool._idle

    _serve(handler, test)


def test_garbage_and_silence_are_errors_not_hangs() -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter, _: Any) -> None:
        await _request(r)
        w.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await w.drain()
        await asyncio.sleep(1)

    async def test_garbage(pool: H1Pool, stats: dict[str, int]) -> None:
        with pytest.raises(UpstreamError):
            await pool.request(b"POST", b"/v1/completions", b"{}")

    _serve(garbage, test_garbage)

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter, _: Any) -> None:
        await _request(r)
        await asyncio.sleep(5)

    async def test_silent(pool: H1Pool, stats: dict[str, int]) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await pool.request(b"POST", b"/v1/completions", b"{}")
        assert not pool._all  # the half-used connection was closed

    _serve(silent, test_silent)


def test_connection_refused_is_an_oserror() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = _pool(f"http://127.0.0.1:{port}")
        with pytest.raises(OSError):
            await pool.request(b"GET", b"/readyz")

    asyncio.run(main())


def test_large_bodies_both_ways_and_an_interim_100_answer() -> None:
    big = bytes(range(256)) * 12_000  # ~3 MB: over the pool's read-pause mark

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                      stats: dict[str, int]) -> None:
        while (req := await _request(r)) is not None:
            assert req.endswith(big)
            w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            w.write(_ok(big, b"content-type: application/octet-stream\r\n"))
            await w.drain()

    async def test(pool: H1Pool, stats: dict[str, int]) -> None:
        resp = await pool.request(b"POST", b"/v1/chat/completions", big)
        assert resp.status == 200 and await resp.read() == big
        resp = await pool.request(b"POST", b"/v1/chat/completions", big)
        got = bytearray()
        async for chunk in resp.iter_any():
            got += chunk
            await asyncio.sleep(0.001)  # a slow reader: reading pauses and resumes
        assert bytes(got) == big
        assert stats["connections"] == 1

    _serve(handler, test)


def test_tls_upstream_verified_or_not(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def strict(pool: H1Pool, stats: dict[str, int]) -> None:
        with pytest.raises(ssl.SSLError):  # the self-signed certificate is not trusted
            await pool.request(b"POST", b"/v1/chat/completions", b'{"q":1}')

    async def lax(pool: H1Pool, stats: dict[str, int]) -> None:
        resp = await pool.request(b"POST", b"/v1/chat/completions", b'{"q":1}')
        assert resp.status == 200 and await resp.read() == JSON

    _serve(_keep_alive, strict, tls=server_ctx)
    _serve(_keep_alive, lax, tls=server_ctx, verify_tls=False)


def test_an_answer_nobody_asked_for_is_ignored_and_the_connection_dropped() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                      stats: dict[str, int]) -> None:
        while await _request(r) is not None:
            w.write(_ok() + _ok(b'{"ok":false}'))  # a broken server: two answers to one request
            await w.drain()

    async def test(pool: H1Pool, stats: dict[str, int]) -> None:
        for _ in range(2):
            resp = await pool.request(b"POST", b"/v1/chat/completions", b"{}")
            assert resp.status == 200 and await resp.read() == JSON
        assert stats["connections"] == 2

    _serve(handler, test)
