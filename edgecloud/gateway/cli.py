"""The `edgecloud gateway` command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from edgecloud.gateway.config import GatewayConfig

_HELP = """Place every OpenAI request on edge or cloud by policy, and explain why.

Examples:

  edgecloud gateway --config examples/gateway.yaml --port 8080

  edgecloud gateway --config gateway.yaml --check          (validate and exit)

  edgecloud gateway --new-key phone-app                     (make a client API key)
"""


def register(app: typer.Typer) -> None:
    """Mount this package's commands on the root app."""
    app.command("gateway", help=_HELP)(gateway)


def gateway(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Gateway YAML (endpoints, policy)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8080, help="Port to bind."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate for HTTPS."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key for HTTPS."),
    insecure_upstream_tls: bool = typer.Option(
        False, "--insecure-upstream-tls", help="Do not verify upstream TLS certificates."
    ),
    check: bool = typer.Option(False, "--check", help="Validate the config and exit."),
    new_key: str | None = typer.Option(
        None, "--new-key", metavar="NAME", help="Print a new client key and its config entry."
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, max=64,
        help="Processes sharing the port (SO_REUSEPORT); with limits or a budget, needs "
        "state.backend: redis.",
    ),
    allow_anonymous: bool = typer.Option(
        False, "--allow-anonymous",
        help="Serve without auth.keys on a non-loopback address (an open relay to your cloud "
        "keys and budget).",
    ),
) -> None:
    """Run the gateway."""
    from rich.console import Console

    err = Console(stderr=True)
    if new_key is not None:
        _print_new_key(new_key)
        return
    if config is None:
        err.print("[red]error:[/] --config FILE is required (see examples/gateway.yaml)")
        raise typer.Exit(2)

    from edgecloud.gateway.config import load_config
    from edgecloud.gateway.errors import ConfigError
    from edgecloud.gateway.server import check_workers, serve

    try:
        cfg = load_config(config)
        check_workers(cfg, workers)
        if check:
            import os

            from edgecloud.gateway.tracing import resolve_tracing

            tracing = resolve_tracing(cfg.tracing, os.environ)
            where = "off" if tracing is None else f"on, to {tracing.endpoint}"
            err.print(f"[green]{config}: valid[/] ({len(cfg.endpoints)} endpoints; "
                      f"tracing {where})", highlight=False)
            for warning in tracing.warnings if tracing is not None else ():
                err.print(f"[yellow]warning:[/] {warning}", highlight=False)
            for line in _confidential_summary(cfg):
                err.print(line, highlight=False)
            err.print(_state_summary(cfg), highlight=False)
            if cfg.state.backend == "redis" and not os.environ.get(cfg.state.url_env):
                err.print(f"[yellow]warning:[/] ${cfg.state.url_env} is not set here; the "
                          "gateway will not start without it", highlight=False)
            return
        _check_exposure(cfg, host, allow_anonymous)
        from edgecloud.logs import configure_logging

        configure_logging()
        serve(cfg, host, port, tls_cert, tls_key, verify_upstream_tls=not insecure_upstream_tls,
              workers=workers)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _check_exposure(cfg: GatewayConfig, host: str, allow_anonymous: bool) -> None:
    """Off loopback with no keys the gateway would be an open relay: refuse unless asked."""
    from edgecloud.fleet.credentials import is_loopback
    from edgecloud.gateway.errors import ConfigError

    if not cfg.auth.keys and not allow_anonymous and not is_loopback(host):
        raise ConfigError(
            f"--host {host} is reachable from other machines and auth.keys is empty: anyone who "
            "reaches the gateway would spend your cloud keys and budget. Add keys (edgecloud "
            "gateway --new-key NAME), bind 127.0.0.1, or pass --allow-anonymous.")


def _state_summary(cfg: GatewayConfig) -> str:
    st = cfg.state
    limited = [k.name for k in cfg.auth.keys if k.limits is not None]
    where = "this process" if st.backend == "memory" else f"redis (${st.url_env}, prefix " \
        f"{st.prefix!r})"
    b = cfg.policy.budget
    budget = "none" if b.monthly_cloud_usd is None else (
        f"{b.monthly_cloud_usd} USD/month, " + ("hard cap" if b.hard else "soft (cloud last)"))
    return (f"state: {where}; budget: {budget}; keys with limits: "
            f"{', '.join(limited) or 'none'}")


def _print_new_key(name: str) -> None:
    import hashlib
    import secrets

    key = "ec-" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    typer.echo(f"key (give it to the client; it is not stored anywhere): {key}")
    typer.echo("add under auth.keys in the gateway config:")
    typer.echo(f"  - {{name: {name}, sha256: {digest}}}")


def _confidential_summary(cfg: GatewayConfig) -> list[str]:
    """What --check says about confidential endpoints (the block itself is validated on load)."""
    names = [e.name for e in cfg.endpoints if e.confidential is not None]
    allow = cfg.policy.privacy.confidential == "allow"
    if not names:
        return (["[yellow]warning:[/] policy.privacy.confidential is allow, but no endpoint has "
                 "a confidential block"] if allow else [])
    use = "may use them while attested" if allow else "stay on the edge: confidential: deny"
    lines = [f"confidential endpoints: {', '.join(names)} (private requests {use})"]
    for e in cfg.endpoints:
        cc = e.confidential
        if cc is not None and not cc.claims:
            lines.append(f"[yellow]warning:[/] {e.name}: no required claims; any TEE the issuer "
                         "attests is trusted (pin the measurements and debug off)")
    return lines
