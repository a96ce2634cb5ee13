"""Run the gateway on uvicorn (uvloop + httptools, no access log) until SIGINT/SIGTERM."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgecloud.gateway.app import GatewayApp
from edgecloud.gateway.config import GatewayConfig
from edgecloud.gateway.errors import ConfigError

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Keep freed request-body memory in the process (glibc only; True when applied).

    By default glibc serves multi-MB blocks with mmap, or trims them back to the kernel when
    freed, so every 2 MB screenshot body faulted fresh zeroed pages in: under load that was a
    third of the gateway's CPU on such bodies (py-spy), and 25% more req/s without it. Bodies up
    to 32 MB now come from the heap, and up to 128 MB of free heap is kept for the next ones.
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment take precedence."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 128 << 20))


def serve(
    config: GatewayConfig,
    host: str = "127.0.0.1",
    port: int = 8080,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    verify_upstream_tls: bool = True,
    workers: int = 1,
) -> None:
    """Serve until a signal arrives; uvicorn drains in-flight requests, then this returns.

    workers > 1: that many processes share the port (SO_REUSEPORT, the kernel spreads the
    connections); each keeps its own breakers and probes, and limits stay exact across them only
    through a shared store, so a config with limits or a budget needs state.backend: redis."""
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key, or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    check_workers(config, workers)
    if workers > 1:
        # Where the workers leave their counts for each other's /metrics (metrics_share.py).
        shared = Path(tempfile.mkdtemp(prefix="edgecloud-gateway-metrics-"))
        try:
            _run_workers(workers, lambda i: _serve_one(
                config, host, port, tls_cert, tls_key, verify_upstream_tls,
                _reuseport(host, port), (shared, i)))
        finally:
            shutil.rmtree(shared, ignore_errors=True)
        return
    _serve_one(config, host, port, tls_cert, tls_key, verify_upstream_tls, None)


def check_workers(config: GatewayConfig, workers: int) -> None:
    """Refuse --workers N > 1 where per-process state would multiply a limit or a budget."""
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    shared = [k.name for k in config.auth.keys if k.limits is not None]
    budget = config.policy.budget.monthly_cloud_usd is not None
    if workers > 1 and config.state.backend == "memory" and (shared or budget):
        what = ("the budget" if budget else "") + (" and " if budget and shared else "") + (
            f"the limits of key(s) {', '.join(shared)}" if shared else "")
        raise ConfigError(
            f"--workers {workers} with state.backend: memory would count {what} once per "
            "worker; set state.backend: redis (and its URL), or run one worker")


def _reuseport(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(4096)
    sock.set_inheritable(False)
    return sock


def _run_workers(workers: int, run: Callable[[int], None]) -> None:
    """Fork `workers` processes that each call `run(index)`; pass SIGINT/SIGTERM on; return
    when all have exited (a worker that dies is not replaced: the orchestrator restarts the
    pod)."""
    pids: list[int] = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                run(index)
            except BaseException:  # noqa: BLE001 - report, then leave without the parent's atexit
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for p in pids:
            try:
                os.kill(p, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in pids:
        while True:
            try:
                os.waitpid(p, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break


def _serve_one(config: GatewayConfig, host: str, port: int, tls_cert: Path | None,
               tls_key: Path | None, verify_upstream_tls: bool,
               sock: socket.socket | None, worker: tuple[Path, int] | None = None) -> None:
    from edgecloud.api.serving import serve_forever

    tune_malloc()
    app = GatewayApp(config, verify_upstream_tls=verify_upstream_tls, worker=worker)
    serve_forever(
        app,
        host,
        port,
        limits=config.limits,
        drain_timeout_s=30,
        backlog=4096,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        sockets=None if sock is None else [sock],
    )
