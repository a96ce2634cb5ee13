"""Start child processes (nodes, gateways, fleet servers), wait until they are ready, stop them.

Used by the demo, by `bench --cold-start` and by the tests: one way to own a child process,
so none is ever left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def edgecloud_command(*args: str) -> list[str]:
    """The command line that runs `edgecloud ARGS` with this interpreter."""
    return [sys.executable, "-m", "edgecloud", *args]


class StartFailed(RuntimeError):
    """A child process exited or did not become ready in time."""


class ManagedProcess:
    """A child process that is ready when `ready_url` answers 200; stopped on exit."""

    def __init__(
        self,
        command: Sequence[str],
        ready_url: str | None = None,
        *,
        env: dict[str, str] | None = None,
        log_path: str | None = None,
        name: str = "",
    ) -> None:
        self.command = list(command)
        self.ready_url = ready_url
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.name = name or os.path.basename(self.command[0])
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process; again once it has exited (a supervisor's restart)."""
        if self.alive():
            raise RuntimeError(f"{self.name} was already started")
        if self._log is not None:
            self._log.close()
            self._log = None
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log
        self.proc = subprocess.Popen(
            self.command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout_s: float = 120.0, interval_s: float = 0.05) -> float:
        """Poll `ready_url` until 200; return seconds waited. Raises StartFailed."""
        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        if self.ready_url is None:
            return 0.0
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise StartFailed(
                        f"{self.name} exited with {self.proc.returncode} before it was ready"
                        + (f"; see {self.log_path}" if self.log_path else "")
                    )
                try:
                    if client.get(self.ready_url).status_code == 200:
                        return time.monotonic() - t0
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t0 > timeout_s:
                    raise StartFailed(f"{self.name} was not ready within {timeout_s:.0f} s")
                time.sleep(interval_s)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to the process group (no drain)."""
        if self.alive():
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait for the drain, SIGKILL if it does not end; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> ManagedProcess:
        if self.proc is None:
            self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
