"""Read deadlines and the connection limit, on the real node, gateway and fleet server.

A client that sends half a header block, or announces a body and stalls, must be answered 408
and closed after the configured deadline; with far more stalled connections than the server
has descriptors for, a normal request must still be served."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port

KINDS = ("gateway", "node", "fleet")
# A body-carrying route of each server, and the open-files limit the crowded server runs with.
POST_PATH = {"gateway": "/v1/chat/completions", "node": "/v1/chat/completions",
             "fleet": "/v1/devices/report"}
SERVER_FILES = 512
STALLED = 1000


def _with_open_files(command: list[str], limit: int) -> list[str]:
    """`command` (python -m edgecloud ...) run under a hard open-files limit of `limit`."""
    assert command[1:3] == ["-m", "edgecloud"]
    boot = ("import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
            "sys.argv = ['edgecloud', *sys.argv[1:]]; "
            "runpy.run_module('edgecloud', run_name='__main__', alter_sys=True)")
    return [command[0], "-c", boot, *command[3:]]


def _start(kind: str, tmp: Path, header_s: float, body_s: float,
           open_files: int | None = None) -> tuple[ManagedProcess, int]:
    port = free_port()
    if kind == "gateway":
        cfg = tmp / "gateway.yaml"
        cfg.write_text(
            "endpoints:\n"
            f"  - {{name: edge-box, tier: edge, url: 'http://127.0.0.1:{free_port()}/v1'}}\n"
            f"limits: {{header_timeout_s: {header_s}, body_timeout_s: {body_s}}}\n"
        )
        cmd = edgecloud_command("gateway", "--config", str(cfg), "--port", str(port))
    elif kind == "node":
        cfg = tmp / "node.yaml"
        cfg.write_text(f"preload: false\nheader_timeout_s: {header_s}\nbody_timeout_s: {body_s}\n")
        cmd = edgecloud_command("serve", "--config", str(cfg), "--port", str(port))
    else:
        from edgecloud.fleet.repository import ModelRepository

        ModelRepository.init(tmp / "repo")
        cmd = edgecloud_command("fleet", "serve", "--repo", str(tmp / "repo"), "--port",
                                str(port), "--no-controller", "--header-timeout", str(header_s),
                                "--body-timeout", str(body_s), "--insecure-dev")
    if open_files is not None:
        cmd = _with_open_files(cmd, open_files)
    proc = ManagedProcess(cmd, f"http://127.0.0.1:{port}/healthz",
                          log_path=str(tmp / f"{kind}.log"), name=kind)
    proc.start()
    proc.wait_ready(60)
    return proc, port


@pytest.fixture(params=KINDS)
def short_deadlines(request: pytest.FixtureRequest, tmp_path: Path
                    ) -> Iterator[tuple[str, int]]:
    proc, port = _start(request.param, tmp_path, header_s=0.5, body_s=0.5)
    try:
        yield request.param, port
    finally:
        proc.stop()


def _read_until_closed(sock: socket.socket, limit_s: float = 30.0) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the connection open."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server kept a stalled connection open for {limit_s} s: {data!r}")
    except ConnectionResetError:
        pass
    return data


@pytest.mark.slow
def test_stalled_headers_get_408_and_are_closed(short_deadlines: tuple[str, int]) -> None:
    kind, port = short_deadlines
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b'"code":"request_timeout"' in data
    # The server is still fine for everyone else.
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200


@pytest.mark.slow
def test_silent_connection_is_closed(short_deadlines: tuple[str, int]) -> None:
    _, port = short_deadlines
    with socket.create_connection(("127.0.0.1", port)) as sock:
        data = _read_until_closed(sock)  # never sends a byte
    assert data.startswith(b"HTTP/1.1 408 "), data


@pytest.mark.slow
def test_stalled_body_gets_408_and_is_closed(short_deadlines: tuple[str, int]) -> None:
    kind, port = short_deadlines
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST {POST_PATH[kind]} HTTP/1.1\r\nHost: x\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     '{"model": "x", '.encode())  # 15 of 1000 bytes, then silence
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"body did not arrive" in data
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200


def test_idle_keep_alive_connection_is_closed_after_keep_alive_s(tmp_path: Path) -> None:
    """The guard's sweep, not a timer per response, closes an idle keep-alive connection; a
    request before then is served on it, and resets the idle time."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "endpoints:\n"
        f"  - {{name: edge-box, tier: edge, url: 'http://127.0.0.1:{free_port()}/v1'}}\n"
        "limits: {keep_alive_s: 0.6}\n"
    )
    port = free_port()
    proc = ManagedProcess(edgecloud_command("gateway", "--config", str(cfg), "--port", str(port)),
                          f"http://127.0.0.1:{port}/healthz", log_path=str(tmp_path / "gw.log"),
                          name="gateway")
    proc.start()
    try:
        proc.wait_ready(60)
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(10)
            for _ in range(3):  # each within the idle limit: the same connection serves them
                sock.sendall(request)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
                time.sleep(0.4)
            idle_from = time.monotonic()
            assert _read_until_closed(sock, limit_s=10) == b""
            idle = time.monotonic() - idle_from + 0.4
        assert 0.6 <= idle < 3.0, idle  # the limit, plus at most a sweep interval or so
    finally:
        proc.stop()


def _open_stalled(port: int, n: int) -> list[socket.socket]:
    """`n` connections that each sent the start of a request and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    deadline = time.monotonic() + 30
    pending = list(socks)
    while pending and time.monotonic() < deadline:  # connected: send the partial request
        left = []
        for s in pending:
            try:
                s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            except (BlockingIOError, OSError):
                left.append(s)
        pending = left
        if pending:
            time.sleep(0.01)
    return socks


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_normal_requests_are_served_past_a_thousand_stalled_connections(
    kind: str, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < STALLED + 200:  # this test process needs the descriptors for its attack
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, STALLED + 500), hard))
    # Long deadlines: only the connection limit can keep the server answering here.
    proc, port = _start(kind, tmp_path, header_s=300, body_s=300, open_files=SERVER_FILES)
    socks: list[socket.socket] = []
    try:
        socks = _open_stalled(port, STALLED)
        with httpx.Client(timeout=30) as client:
            for _ in range(3):
                r = client.get(f"http://127.0.0.1:{port}/healthz",
                               headers={"connection": "close"})
                assert r.status_code == 200
        log = (tmp_path / f"{kind}.log").read_text()
        assert '"event":"connection_limit_reached"' in log
        assert '"limit":224' in log  # half of what the open-files limit leaves after a reserve
    finally:
        for s in socks:
            s.close()
        proc.stop()
