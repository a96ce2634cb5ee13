"""Gateway test rig: real gateway processes, real nodes, recording stand-in cloud providers.

A plain module (not conftest.py) so that tests import its helpers by a unique name."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port


def start_node(tmp: Path, *extra: str, name: str = "node") -> tuple[ManagedProcess, str]:
    """Start a real `edgecloud serve` (see tests/conftest.py); returns (process, base URL)."""
    from tests.conftest import start_node as shared_start_node

    return shared_start_node(tmp, *extra, name=name)


@dataclass
class Standin:
    """A running stand-in cloud provider and its recording."""

    proc: ManagedProcess
    base: str  # without /v1

    @property
    def v1(self) -> str:
        return self.base + "/v1"

    def received(self) -> list[dict[str, Any]]:
        return httpx.get(self.base + "/_received", timeout=5).json()

    def clear(self) -> None:
        httpx.delete(self.base + "/_received", timeout=5)

    def control(self, **settings: Any) -> None:
        httpx.post(self.base + "/_control", json=settings, timeout=5).raise_for_status()


@dataclass
class Gateway:
    proc: ManagedProcess
    base: str
    log_path: Path

    @property
    def v1(self) -> str:
        return self.base + "/v1"

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def wait_log(self, needle: str, timeout_s: float = 10.0) -> str:
        """The log text once it contains `needle` (the gateway flushes its log every 0.2 s)."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            if needle in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)


def launch_standin(tmp: Path, started: list[ManagedProcess], name: str = "standin-cloud",
                   model_id: str = "standin-model") -> Standin:
    """Start a stand-in provider process (tracked in `started` for stopping)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(
        [sys.executable, "-m", "edgecloud.testing.standin_provider", "--port", str(port),
         "--name", name, "--model-id", model_id],
        f"{base}/healthz", log_path=str(tmp / f"{name}-{port}.log"), name=name,
    )
    started.append(proc)
    proc.start()
    proc.wait_ready(timeout_s=30)
    return Standin(proc, base)


def launch_gateway(tmp: Path, started: list[ManagedProcess], config: dict[str, Any], *extra: str,
                   env: dict[str, str] | None = None, scheme: str = "http") -> Gateway:
    """Start `edgecloud gateway` on a free port with `config`; waits for /healthz."""
    port = free_port()
    cfg_path = tmp / f"gateway-{port}.yaml"
    cfg_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    base = f"{scheme}://127.0.0.1:{port}"
    log_path = tmp / f"gateway-{port}.log"
    proc = ManagedProcess(
        edgecloud_command("gateway", "--config", str(cfg_path), "--port", str(port), *extra),
        None, log_path=str(log_path), env=env, name="gateway",
    )
    started.append(proc)
    proc.start()
    _wait_http(proc, f"{base}/healthz")
    return Gateway(proc, base, log_path)


@contextmanager
def stopped_after() -> Iterator[list[ManagedProcess]]:
    """A list to start processes into; all are stopped, newest first, when the block ends."""
    started: list[ManagedProcess] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            p.stop()


@pytest.fixture
def start_standin(tmp_path: Path) -> Iterator[Callable[..., Standin]]:
    started: list[ManagedProcess] = []

    def start(name: str = "standin-cloud", model_id: str = "standin-model") -> Standin:
        return launch_standin(tmp_path, started, name, model_id)

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[ManagedProcess] = []

    def start(config: dict[str, Any], *extra: str, env: dict[str, str] | None = None,
              scheme: str = "http") -> Gateway:
        return launch_gateway(tmp_path, started, config, *extra, env=env, scheme=scheme)

    yield start
    for p in started:
        p.stop()


def _wait_http(proc: ManagedProcess, url: str, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, verify=False) as client:
        while time.monotonic() < deadline:
            assert proc.alive(), f"gateway exited with {proc.proc.returncode if proc.proc else '?'}"
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{url} not up within {timeout_s} s")


def endpoint(name: str, tier: str, url: str, **kw: Any) -> dict[str, Any]:
    """One endpoint entry of a gateway config."""
    caps = kw.pop("capabilities", ["text", "vision"] if tier == "cloud" else ["text"])
    return {"name": name, "tier": tier, "url": url, "capabilities": caps,
            "region": kw.pop("region", "device" if tier == "edge" else "eu-central-1"), **kw}


def fast_limits() -> dict[str, Any]:
    return {"health_interval_s": 0.2, "breaker_failures": 2, "breaker_open_s": 1.0}


def png_data_uri(min_bytes: int = 2_000_000, seed: int = 7) -> str:
    """A valid PNG of random pixels (incompressible, so about `min_bytes`) as a data URI."""
    import base64
    import random
    import struct
    import zlib

    side = int((min_bytes / 3) ** 0.5) + 1
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()
