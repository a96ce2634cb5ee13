"""Run the gateway on uvicorn (uvloop + httptools, no access log) until SIGINT/SIGTERM."""

from __future__ import annotations

from pathlib import Path

from edgecloud.gateway.app import GatewayApp
from edgecloud.gateway.config import GatewayConfig
from edgecloud.gateway.errors import ConfigError


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
    app = GatewayApp(config, verify_upstream_tls=verify_upstream_tls)
    # The corked protocol sends a response's headers and body in one write.
    serve_forever(
        app,
        host,
        port,
        drain_timeout_s=30,
        backlog=4096,
        http=CorkedHttpToolsProtocol,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
    )
