"""Fault drivers: things that go wrong on purpose, each started and ended by the campaign.

The link to the fleet server that drops, garbles or trickles is `edgecloud.testing.faulty_link`.

Every driver is a context manager or a bounded function: it undoes what it did when it ends, and
none runs for longer than it is told. They talk to real processes and sockets on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecloud.supervise import ManagedProcess

# -- processes ---------------------------------------------------------------------------------


def kill9(proc: ManagedProcess) -> None:
    """SIGKILL the process group: no drain, no cleanup (a power cut or an OOM kill)."""
    proc.kill(signal.SIGKILL)
    if proc.proc is not None:
        with contextlib.suppress(Exception):
            proc.proc.wait(10)


@contextlib.contextmanager
def frozen(proc: ManagedProcess) -> Iterator[None]:
    """SIGSTOP for the body, then SIGCONT: a process that stops answering but keeps its sockets."""
    proc.kill(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.kill(signal.SIGCONT)


# -- clients that misbehave ------------------------------------------------------------------


@contextlib.contextmanager
def slowloris(port: int, count: int, host: str = "127.0.0.1",
              drip_s: float = 5.0) -> Iterator[list[socket.socket]]:
    """`count` connections that send a request line and a header, then one more header byte
    every `drip_s` and never finish. Closed on exit. Yields the open sockets."""
    socks: list[socket.socket] = []
    stop = threading.Event()
    for i in range(count):
        try:
            s = socket.create_connection((host, port), timeout=2)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-a: ")
            socks.append(s)
        except OSError:
            break
        if i % 100 == 99:
            time.sleep(0.05)  # let the server accept

    def drip() -> None:
        while not stop.wait(drip_s):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(b"a")

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    try:
        yield socks
    finally:
        stop.set()
        t.join(drip_s + 1)
        for s in socks:
            s.close()


DISCONNECT_PHASES = ("connect", "request_line", "headers", "half_body", "full_body",
                     "first_chunk")


def disconnect_at(port: int, phase: str, body: bytes, headers: dict[str, str] | None = None,
                  path: str = "/v1/chat/completions", timeout_s: float = 30.0) -> str:
    """One client that hangs up at `phase` of a request (see DISCONNECT_PHASES).

    "first_chunk" reads the response until its first body bytes arrive (a streamed answer has
    started), then hangs up. Returns what the client saw before it left."""
    assert phase in DISCONNECT_PHASES, phase
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n").encode()
    seen = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        if phase == "request_line":
            s.sendall(head.split(b"\r\n", 1)[0] + b"\r\n")
        elif phase == "headers":
            s.sendall(head)
        elif phase == "half_body":
            s.sendall(head + body[: len(body) // 2])
        elif phase == "full_body":
            s.sendall(head + body)
            time.sleep(0.05)
        elif phase == "first_chunk":
            s.sendall(head + body)
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in seen or seen.endswith(b"\r\n\r\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    seen += chunk
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return seen.split(b"\r\n", 1)[0].decode("latin-1", "replace")


# -- the fleet server's database ---------------------------------------------------------------


@contextlib.contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite database: every other writer gets "database is
    locked" until the body ends."""
    con = sqlite3.connect(path, timeout=1, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        con.close()


@contextlib.contextmanager
def sqlite_removed(path: Path) -> Iterator[None]:
    """Move a SQLite database (and its journal files) away for the body, then put it back."""
    moved: list[tuple[Path, Path]] = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        if p.exists():
            away = p.with_name(p.name + ".away")
            os.replace(p, away)
            moved.append((away, p))
    try:
        yield
    finally:
        for away, p in moved:
            if p.exists():  # the server made a new, empty one meanwhile: the old one wins
                p.unlink()
            os.replace(away, p)


@contextlib.contextmanager
def postgres_stopped(server: Any) -> Iterator[None]:
    """Stop a PostgreSQL server at once (`pg_ctl -m immediate`: no checkpoint, connections cut)
    for the body, then start it again (an `edgecloud.testing.postgres.PostgresServer`)."""
    server._run("pg_ctl", "-D", str(server.data), "-m", "immediate", "-w", "stop")
    server.started = False
    try:
        yield
    finally:
        server.start()
