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
    import uvicorn

    # The node's clean-exit server (drain, then exit 0 rather than re-raise the signal);
    # serve_forever itself fixes http="httptools", and the gateway needs its corked protocol.
    from edgecloud.api.serving import _CleanExitServer
    from edgecloud.gateway.cork import CorkedHttpToolsProtocol

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key, or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    app = GatewayApp(config, verify_upstream_tls=verify_upstream_tls)
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=CorkedHttpToolsProtocol,
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=30,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
    )
    _CleanExitServer(uv_config).run()
