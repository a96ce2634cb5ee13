"""Our HTTP/1.1 server protocol on the wire: a real server on 127.0.0.1, raw sockets, the cases
clients and attackers send (pipelining, 100-continue, HEAD, HTTP/1.0, upgrades, bad bytes, big
bodies, apps that fail)."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from edgecloud.api.asgi import read_body
from edgecloud.api.clientwatch import SCOPE_KEY
from edgecloud.api.guard import ConnectionGuard, ServingLimits
from edgecloud.api.protocol import HttpProtocol

SEEN: list[str] = []  # what the app noticed, for the disconnect tests


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % i,
                        "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/raise":
        raise ValueError("a defect")
    if path == "/nothing":
        return
    if path == "/bad-header":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-evil", b"a\r\nset-cookie: b")]})
        return
    if path == "/too-long":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"abc"})
        return
    if path == "/no-content":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b"ignored"})
        return
    if path == "/early":  # answers without reading the body
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"no"})
        return
    if path == "/watch":  # waits until the client leaves
        await read_body(receive, 1 << 20)
        watch = scope[SCOPE_KEY]
        while not watch.gone:
            await asyncio.sleep(0.01)
        SEEN.append("gone")
        message = await receive()
        SEEN.append(message["type"])
        return
    if path == "/two-listeners":  # a watcher task and the handler both wait on receive()
        await read_body(receive, 1 << 20)

        async def listen() -> None:
            SEEN.append((await receive())["type"])

        task = asyncio.ensure_future(listen())
        await listen()
        await task
        return
    if path == "/slow":
        await asyncio.sleep(float(scope["query_string"].decode().split("=")[1]))
    body = await read_body(receive, 64 << 20)
    answer = orjson.dumps({"method": scope["method"], "path": path,
                           "query": scope["query_string"].decode(),
                           "http_version": scope["http_version"], "bytes": len(body),
                           "raw_path": scope["raw_path"].decode()})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    limits = ServingLimits(header_timeout_s=5, body_timeout_s=5)
    guard = ConnectionGuard(limits, 256)
    config = uvicorn.Config(_app, loop="uvloop", lifespan="off", log_level="critical",
                            http=functools.partial(HttpProtocol, guard=guard),  # type: ignore[arg-type]
                            server_header=False, date_header=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(20)


def _exchange(port: int, data: bytes, until: bytes | None = None, limit_s: float = 10.0) -> bytes:
    """Send `data`, read until `until` is seen (or the server closes)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        return _read(sock, until, limit_s)


def _read(sock: socket.socket, until: bytes | None, limit_s: float = 10.0) -> bytes:
    sock.settimeout(limit_s)
    out = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if until is not None and out.count(until) >= 1 and out.endswith(until):
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _answers(raw: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Split a byte stream of content-length answers into (status line, headers, body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines[1:])}
        n = int(headers[b"content-length"])
        out.append((lines[0], headers, rest[:n]))
        raw = rest[n:]
    return out


def test_keep_alive_and_one_segment_per_small_answer(port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for i in range(3):
            r = client.post("/echo?x=1", content=b"a" * i)
            assert r.status_code == 200
            assert r.json() == {"method": "POST", "path": "/echo", "query": "x=1",
                                "http_version": "1.1", "bytes": i, "raw_path": "/echo"}


def test_percent_encoded_path_is_decoded_and_raw_path_kept(port: int) -> None:
    r = httpx.get(f"http://127.0.0.1:{port}/a%20b")
    assert r.json()["path"] == "/a b"
    assert r.json()["raw_path"] == "/a%20b"


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    reqs = b"".join(b"POST /slow?s=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                    % (s, len(body), body)
                    for s, body in ((b"0.2", b"first"), (b"0", b"second!"), (b"0.05", b"3")))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(reqs)
        raw = b""
        while len(_safe_answers(raw)) < 3:
            chunk = sock.recv(65536)
            assert chunk, raw
            raw += chunk
    bodies = [orjson.loads(body)["bytes"] for _, _, body in _answers(raw)]
    assert bodies == [5, 7, 1]


def _safe_answers(raw: bytes) -> list[Any]:
    try:
        return _answers(raw)
    except (KeyError, ValueError):
        return []


def test_expect_100_continue(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = _read(sock, b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abcd")
        raw = _read(sock, b"}")
    (status, _, body), = _answers(raw)
    assert status == b"HTTP/1.1 200 OK"
    assert orjson.loads(body)["bytes"] == 4


def test_an_answer_before_the_expected_body_closes_the_connection(port: int) -> None:
    raw = _exchange(port, b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                          b"Expect: 100-continue\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in raw  # and the server closed: _exchange read to the end


def test_head_sends_no_body(port: int) -> None:
    raw = _exchange(port, b"HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: " in head
    assert body == b""


def test_204_sends_no_body_and_keeps_the_connection(port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        r = client.get("/no-content")
        assert r.status_code == 204 and r.content == b""
        assert "transfer-encoding" not in r.headers
        assert client.post("/echo", content=b"ab").json()["bytes"] == 2  # framing intact


def test_stream_is_chunked(port: int) -> None:
    with httpx.Client() as client, client.stream("GET", f"http://127.0.0.1:{port}/stream") as r:
        assert r.headers["transfer-encoding"] == "chunked"
        assert b"".join(r.iter_raw()) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_http10_answer_closes(port: int) -> None:
    raw = _exchange(port, b"GET /stream HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head  # HTTP/1.0 has no chunks: the close ends the body
    assert b"connection: close" in head
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_garbage_gets_400_and_is_closed(port: int) -> None:
    raw = _exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b'"type":"invalid_request_error"' in raw
    assert b"connection: close" in raw


def test_bad_chunked_body_after_good_headers_gets_400(port: int) -> None:
    raw = _exchange(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                          b"\r\nzz\r\nabc\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")


def test_upgrade_is_answered_as_a_plain_request_then_closed(port: int) -> None:
    raw = _exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                          b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x85junk")
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in raw


def test_app_that_raises_gets_a_500_in_the_openai_shape(port: int) -> None:
    r = httpx.get(f"http://127.0.0.1:{port}/raise")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    r = httpx.get(f"http://127.0.0.1:{port}/nothing")
    assert r.status_code == 500


def test_header_injection_is_refused(port: int) -> None:
    raw = _exchange(port, b"GET /bad-header HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert b"set-cookie" not in raw


def test_body_longer_than_content_length_is_a_500_while_nothing_was_sent(port: int) -> None:
    raw = _exchange(port, b"GET /too-long HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500 ")  # the held head never left: the 500 replaces it
    assert b"abc" not in raw


def test_big_body_arrives_whole_with_flow_control(port: int) -> None:
    body = bytes(range(256)) * (12 << 12)  # 12 MiB
    r = httpx.post(f"http://127.0.0.1:{port}/echo", content=body, timeout=60)
    assert r.json()["bytes"] == len(body)


def _sent_then_left(port: int, request: bytes, events: int) -> list[str]:
    """Send `request`, close the connection, and return what the app noticed."""
    SEEN.clear()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
    deadline = time.monotonic() + 10
    while len(SEEN) < events and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(SEEN)


def test_client_that_leaves_is_noticed(port: int) -> None:
    seen = _sent_then_left(
        port, b"POST /watch HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", 2)
    assert seen == ["gone", "http.disconnect"]


def test_two_listeners_both_hear_the_disconnect(port: int) -> None:
    seen = _sent_then_left(
        port, b"POST /two-listeners HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 2)
    assert seen == ["http.disconnect", "http.disconnect"]


def test_many_concurrent_clients(port: int) -> None:
    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     limits=httpx.Limits(max_connections=64)) as client:
            rs = await asyncio.gather(*(client.post("/echo", content=b"x" * i)
                                        for i in range(300)))
            return [r.json()["bytes"] for r in rs]

    assert asyncio.run(run()) == list(range(300))


def test_oversized_head_gets_431_and_is_closed(port: int) -> None:
    raw = _exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\n"
                          + b"X-Pad: " + b"a" * 100_000 + b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert b'"code":"request_header_fields_too_large"' in raw


@pytest.mark.parametrize("attack", [
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nabcde",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
], ids=["cl-and-te", "two-lengths", "space-before-colon", "obs-fold", "nul"])
def test_request_smuggling_shapes_get_400_and_a_close(port: int, attack: bytes) -> None:
    raw = _exchange(port, attack)
    assert raw.startswith(b"HTTP/1.1 400 "), raw
    assert raw.count(b"HTTP/1.1 ") == 1 and b"/smuggled" not in raw
