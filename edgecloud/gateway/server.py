"""Run the gateway on uvicorn (uvloop + httptools, no access log) until SIGINT/SIGTERM."""

from __future__ import annotations

import ctypes
import os
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
) -> None:
    """Serve until a signal arrives; uvicorn drains in-flight requests, then this returns."""
    from edgecloud.api.serving import serve_forever
    from edgecloud.gateway.cork import CorkedHttpToolsProtocol

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key, or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    tune_malloc()
    app = GatewayApp(config, verify_upstream_tls=verify_upstream_tls)
    # The corked protocol sends a response's headers and body in one write.
    serve_forever(
        app,
        host,
        port,
        limits=config.limits,
        drain_timeout_s=30,
        backlog=4096,
        protocol=CorkedHttpToolsProtocol,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
    )
