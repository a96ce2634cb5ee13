"""Bench fixtures: the stand-in OpenAI provider (edgecloud/testing/standin_openai.py) as a real
process, started per test with the behaviour the test injects."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgecloud.supervise import ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]


def standin_command(port: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "edgecloud.testing.standin_openai", "--port", str(port), *options]


def start_standin(tmp: Path, *options: str) -> tuple[ManagedProcess, str]:
    """A ready stand-in; returns (process, base URL without /v1)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = ManagedProcess(
        standin_command(port, *options),
        f"{base}/healthz",
        env=env,
        log_path=str(tmp / f"standin-{port}.log"),
        name="standin",
    )
    proc.start()
    try:
        proc.wait_ready(timeout_s=30)
    except BaseException:
        proc.stop()
        raise
    return proc, base


StartStandin = Callable[..., str]


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StartStandin]:
    """`standin(*options)` starts a stand-in and returns its base URL; all stop at the end."""
    procs: list[ManagedProcess] = []

    def start(*options: str) -> str:
        proc, base = start_standin(tmp_path, *options)
        procs.append(proc)
        return base

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def repo_root() -> Path:
    return REPO
