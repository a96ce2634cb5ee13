"""Commands of edgecloud.fleet: `release ...`, `fleet serve|status`, `agent`.

Thin: parse, call the library, render. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from edgecloud.fleet.repository import ModelRepository

release_app = typer.Typer(
    help="Publish signed model versions (a TUF repository) and steer their rollout.",
    no_args_is_help=True,
)
fleet_app = typer.Typer(
    help="The fleet server (TUF repository + device API) and its status.", no_args_is_help=True
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> float:
    text = text.strip()
    if text and text[-1] in _UNITS:
        return float(text[:-1]) * _UNITS[text[-1]]
    return float(text)


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(1)


@contextmanager
def _locked_repository(repo: Path, *also: type[Exception]) -> Iterator[ModelRepository]:
    """The repository at `repo` under its lock; a FleetError (or one of `also`) ends the
    command with its message."""
    from edgecloud.fleet.errors import FleetError
    from edgecloud.fleet.repository import ModelRepository, repo_lock

    caught: tuple[type[Exception], ...] = (FleetError, *also)
    try:
        with repo_lock(repo):
            yield ModelRepository(repo)
    except caught as exc:
        _fail(str(exc))


@release_app.command("init")
def release_init(
    repo: Path = typer.Argument(..., help="Folder for the new repository."),
    keys_dir: Path | None = typer.Option(None, help="Where to write private keys [REPO/keys]."),
    root_keys: int = typer.Option(1, help="Number of root keys."),
    root_threshold: int = typer.Option(1, help="Root signatures required."),
    targets_keys: int = typer.Option(1, help="Number of targets keys."),
    targets_threshold: int = typer.Option(1, help="Targets signatures required."),
    expires: list[str] = typer.Option(
        [], help="ROLE=DURATION, e.g. timestamp=1d, snapshot=7d, targets=90d, root=365d."
    ),
) -> None:
    """Create a repository with fresh ed25519 keys for root, targets, snapshot, timestamp.

    Example: edgecloud release init ./repo --expires timestamp=6h
    """
    from edgecloud.fleet.errors import FleetError
    from edgecloud.fleet.repository import ModelRepository

    expiry = {}
    for item in expires:
        role, _, dur = item.partition("=")
        expiry[role] = _seconds(dur)
    try:
        r = ModelRepository.init(
            repo,
            keys_dir=keys_dir,
            key_counts={"root": root_keys, "targets": targets_keys},
            thresholds={"root": root_threshold, "targets": targets_threshold},
            expiry_s=expiry,
        )
    except FleetError as exc:
        _fail(str(exc))
    typer.echo(f"repository ready; provision devices with {r.root_file()}")


@release_app.command("add")
def release_add(
    repo: Path = typer.Argument(...),
    model_file: Path = typer.Argument(..., exists=True, dir_okay=False),
    name: str = typer.Option(..., "--name", help="Model name, e.g. gemma-3-270m."),
    version: str = typer.Option(..., "--version", help="X.Y.Z"),
    notes: str = typer.Option("", help="Release notes."),
    min_agent_version: str = typer.Option("0.0.0", help="Oldest agent that may install it."),
    stable: bool = typer.Option(False, help="Mark stable at once (a fleet's first version)."),
    link: bool = typer.Option(False, help="Hard-link the file instead of copying it."),
) -> None:
    """Sign a model file as a new target (not rolled out until `release rollout`).

    Example: edgecloud release add ./repo model.gguf --name gemma-3-270m --version 1.1.0
    """
    with _locked_repository(repo, ValueError) as r:
        rel = r.add_model(
            model_file,
            name,
            version,
            notes=notes,
            min_agent_version=min_agent_version,
            stable=stable,
            link=link,
        )
    typer.echo(f"added {rel.model} {rel.version} ({rel.size} bytes, sha256 {rel.sha256[:12]})")


@release_app.command("rollout")
def release_rollout(
    repo: Path = typer.Argument(...),
    name: str = typer.Argument(...),
    version: str = typer.Argument(...),
    percent: float = typer.Option(5.0, help="Start at this percentage of the fleet."),
    stages: str = typer.Option("5,25,100", help="Stages the controller walks through."),
    soak: str = typer.Option("60s", help="Time at each stage before the next."),
    min_reports: int = typer.Option(
        3, help="Quorum: distinct enrolled devices on the new version before gates judge it."
    ),
    max_error_rate: float = typer.Option(0.05),
    max_p95_ms: float | None = typer.Option(None),
    min_eval_score: float | None = typer.Option(0.5),
    max_failures: int = typer.Option(0, help="Devices allowed to fail/roll back the version."),
    max_failure_fraction: float = typer.Option(
        0.01, help="Failures allowed as a fraction of the stage's devices (floor: max-failures)."
    ),
    max_devices_per_minute: float | None = typer.Option(
        None, help="Tell at most this many more devices per minute to install (ramped stages)."
    ),
    manual: bool = typer.Option(False, help="Do not advance by itself (gates still abort)."),
) -> None:
    """Stage a version for a percentage of the fleet; the fleet server advances or aborts it.

    Example: edgecloud release rollout ./repo gemma-3-270m 1.1.0 --percent 5 --max-p95-ms 800
    """
    from edgecloud.fleet.rollout import Gates, RolloutPlan

    try:
        plan = RolloutPlan(
            stages=[float(s) for s in stages.split(",") if s.strip()],
            gates=Gates(
                max_error_rate=max_error_rate, max_p95_ms=max_p95_ms,
                min_eval_score=min_eval_score, max_failures=max_failures,
                max_failure_fraction=max_failure_fraction,
            ),
            soak_s=_seconds(soak), min_reports=min_reports, auto=not manual,
            max_devices_per_minute=max_devices_per_minute,
        )
    except ValueError as exc:
        _fail(str(exc))
    with _locked_repository(repo, ValueError) as r:
        rel = r.start_rollout(name, version, percent, plan)
    typer.echo(f"{rel.model} {rel.version}: {rel.rollout.stage} at {rel.rollout.percent:g}%")


@release_app.command("rollback")
def release_rollback(
    repo: Path = typer.Argument(...),
    name: str = typer.Argument(...),
    reason: str = typer.Option("rolled back by the operator"),
) -> None:
    """Abort the version being rolled out (or the newest stable one): devices go back."""
    with _locked_repository(repo) as r:
        rel = r.rollback(name, reason)
    typer.echo(f"{rel.model} {rel.version}: aborted")


@release_app.command("rotate-key")
def release_rotate_key(
    repo: Path = typer.Argument(...),
    role: str = typer.Argument(..., help="root, targets, snapshot or timestamp"),
) -> None:
    """Replace a role's keys; devices that were offline follow the signed root chain."""
    with _locked_repository(repo) as r:
        keyid = r.rotate_key(role)
    typer.echo(f"{role} key rotated; new key id {keyid[:16]}")


@release_app.command("publish")
def release_publish(
    repo: Path = typer.Argument(...),
    to: list[str] = typer.Option(..., help="DIR, file:///DIR or s3://BUCKET/PREFIX."),
    endpoint_url: str | None = typer.Option(None, help="S3-compatible endpoint URL."),
    timestamp_max_age: int = typer.Option(60, help="Cache-Control max-age of timestamp.json."),
) -> None:
    """Copy the repository to mirrors (targets, then metadata, timestamp.json last). A
    running `fleet serve --mirror` does this itself after every change."""
    from edgecloud.fleet.errors import FleetError
    from edgecloud.fleet.mirror import Publisher, open_sink
    from edgecloud.fleet.repository import repo_lock

    try:
        with repo_lock(repo):
            sinks = [open_sink(dest, endpoint_url) for dest in to]
            written = Publisher(repo, sinks, timestamp_max_age).publish()
    except FleetError as exc:
        _fail(str(exc))
    typer.echo(f"published {written} files to {', '.join(to)}")


@release_app.command("list")
def release_list(repo: Path = typer.Argument(...)) -> None:
    """Show the releases and their rollout state."""
    from rich.console import Console
    from rich.table import Table

    from edgecloud.fleet.repository import ModelRepository

    table = Table("model", "version", "stage", "percent", "size", "reason")
    for r in sorted(ModelRepository(repo, env={}).releases(), key=lambda r: r.key):
        table.add_row(
            r.model,
            r.version,
            r.rollout.stage,
            f"{r.rollout.percent:g}",
            str(r.size),
            r.rollout.reason,
        )
    Console().print(table)


def _db_url(repo: Path, db: str, db_env: str | None) -> str:
    """The database URL from --db, the variable named by --db-env, or SQLite in the repo."""
    if db and db_env:
        _fail("give --db or --db-env, not both")
    if db_env:
        db = os.environ.get(db_env, "")
        if not db:
            _fail(f"--db-env {db_env}: the environment variable {db_env} is not set")
    return db or f"sqlite:///{repo.resolve() / 'fleet.db'}"


OPERATOR_TOKEN_ENV = "EDGECLOUD_FLEET_TOKEN"
ENROL_TOKEN_ENV = "EDGECLOUD_ENROL_TOKEN"


def _verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=str(ca_file)) if ca_file else True


@fleet_app.command("serve")
def fleet_serve(
    repo: Path = typer.Option(..., help="The release repository to serve."),
    db: str = typer.Option("", help="SQLAlchemy URL [sqlite:///REPO/fleet.db]."),
    db_env: str | None = typer.Option(
        None, help="Env var holding the database URL (keeps its password off the command line)."
    ),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8700),
    keys_dir: Path | None = typer.Option(None, help="Online keys [REPO/keys]."),
    tick: float = typer.Option(2.0, help="Seconds between rollout controller passes."),
    rate_limit: float | None = typer.Option(None, help="Bytes/s per model download."),
    operator_token_env: str = typer.Option(
        OPERATOR_TOKEN_ENV, help="Env var with the operator token (status, metrics, enrolment)."
    ),
    insecure_dev: bool = typer.Option(
        False, help="No tokens at all: anyone may report and read status. Never on a network."
    ),
    tls_cert: Path | None = typer.Option(None, help="Certificate (PEM) to serve https."),
    tls_key: Path | None = typer.Option(None, help="Private key (PEM) of --tls-cert."),
    allow_plain_http: bool = typer.Option(
        False, help="Serve http on a non-loopback --host (only behind a TLS proxy)."
    ),
    report_rate: float = typer.Option(1.0, help="Reports per second per device, sustained."),
    report_burst: float = typer.Option(10.0, help="Reports a device may send in a burst."),
    enrol_rate: float = typer.Option(20.0, help="Enrolments per second, fleet-wide."),
    enrol_burst: float | None = typer.Option(
        None, help="Enrolments in a burst, fleet-wide [5 s of --enrol-rate]."
    ),
    enrol_rate_per_address: float = typer.Option(
        5.0, help="Enrolment attempts per second per source address (bursts of 5 s)."
    ),
    max_devices: int = typer.Option(100_000, help="Most devices that may enrol."),
    no_controller: bool = typer.Option(False, help="Serve only; never advance or abort."),
    poll_interval: float | None = typer.Option(
        None, help="Tell every device to poll this often (s) [each device's own --interval]."
    ),
    shed_write_lag: float = typer.Option(
        1.0, help="When report writes take longer than this (s), tell devices to come back later."
    ),
    mirror: list[str] = typer.Option(
        [],
        help="Publish the repository here after every change (DIR, file:///DIR or "
        "s3://BUCKET/PREFIX); repeatable. Done by the process holding the controller lease.",
    ),
    mirror_endpoint_url: str | None = typer.Option(
        None, help="S3-compatible endpoint for s3:// mirrors (MinIO, Ceph, R2...)."
    ),
    timestamp_max_age: int = typer.Option(
        60, help="Cache-Control max-age (s) of timestamp.json on mirrors."
    ),
    header_timeout: float = typer.Option(10.0, help="Seconds a client may take to send headers."),
    body_timeout: float = typer.Option(60.0, help="Seconds a client may take to send a body."),
    max_connections: int | None = typer.Option(
        None, help="Open client connections (default: half the open-files limit)."
    ),
) -> None:
    """Serve the TUF repository and the device API; run the rollout controller.

    Example: EDGECLOUD_FLEET_TOKEN=... FLEET_DB=postgresql://fleet:PASSWORD@db/fleet
    edgecloud fleet serve --repo ./repo --db-env FLEET_DB --host 0.0.0.0
    --tls-cert fleet.pem --tls-key fleet-key.pem
    """
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    from edgecloud.api.guard import ServingLimits
    from edgecloud.fleet.errors import FleetError
    from edgecloud.fleet.server import ServerConfig, serve
    from edgecloud.fleet.state import masked_url
    from edgecloud.logs import configure_logging

    configure_logging()
    url = _db_url(repo, db, db_env)
    token = os.environ.get(operator_token_env) or None
    if token is not None and insecure_dev:
        _fail(f"--insecure-dev ignores tokens: unset {operator_token_env} or drop the flag")
    try:
        shown = masked_url(url)
        config = ServerConfig(
            repo=repo,
            db_url=url,
            keys_dir=keys_dir,
            tick_s=tick, rate_limit_bps=rate_limit, operator_token=token, insecure=insecure_dev,
            report_rate=report_rate, report_burst=report_burst,
            enrol_rate=enrol_rate, enrol_burst=enrol_burst,
            enrol_rate_per_address=enrol_rate_per_address, max_devices=max_devices,
            controller=not no_controller, mirrors=mirror, poll_interval_s=poll_interval,
            shed_write_lag_s=shed_write_lag, mirror_endpoint_url=mirror_endpoint_url,
            timestamp_max_age_s=timestamp_max_age,
            limits=ServingLimits(
                header_timeout_s=header_timeout,
                body_timeout_s=body_timeout,
                max_connections=max_connections,
            ),
        )
        serve(config, host, port, tls_cert, tls_key, allow_plain_http)
    except FleetError as exc:
        _fail(str(exc))
    except ValueError as exc:  # a too short operator token
        _fail(f"{operator_token_env}: {exc}")
    except SQLAlchemyError as exc:  # the driver's message names host and user, not the password
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        _fail(f"cannot use the fleet database {shown}: {str(reason).strip()}")


@fleet_app.command("enrol-token")
def fleet_enrol_token(
    server: str = typer.Option("http://127.0.0.1:8700", help="Fleet server URL."),
    device_id: str | None = typer.Option(None, help="Bind the token to this device id."),
    uses: int = typer.Option(1, help="Devices the token may enrol."),
    ttl: str = typer.Option("1d", help="Time the token stays valid, e.g. 1h, 7d."),
    operator_token_env: str = typer.Option(OPERATOR_TOKEN_ENV, help="Env var: operator token."),
    ca_file: Path | None = typer.Option(None, help="CA bundle of the fleet server's certificate."),
) -> None:
    """Issue an enrolment token; give it to devices as EDGECLOUD_ENROL_TOKEN.

    Example: edgecloud fleet enrol-token --server https://fleet:8700 --uses 50 --ttl 7d
    """
    from edgecloud.fleet.enrolment import request_enrolment_token
    from edgecloud.fleet.errors import FleetError

    try:
        token = request_enrolment_token(
            server,
            os.environ.get(operator_token_env),
            device_id=device_id,
            uses=uses,
            ttl_s=_seconds(ttl),
            verify=_verify(ca_file),
        )
    except FleetError as exc:
        _fail(str(exc))
    typer.echo(token)


@fleet_app.command("status")
def fleet_status(
    server: str = typer.Option("http://127.0.0.1:8700", help="Fleet server URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
    operator_token_env: str = typer.Option(OPERATOR_TOKEN_ENV, help="Env var: operator token."),
    ca_file: Path | None = typer.Option(None, help="CA bundle of the fleet server's certificate."),
) -> None:
    """Print the fleet: who runs what, rollouts, gate values, recent failures."""
    import httpx
    import orjson
    from rich.console import Console
    from rich.table import Table

    token = os.environ.get(operator_token_env)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(
            f"{server.rstrip('/')}/v1/fleet/status",
            headers=headers,
            timeout=10,
            verify=_verify(ca_file),
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the fleet server {server}: {exc}")
    if r.status_code != 200:
        _fail(f"the fleet server refused (HTTP {r.status_code}); set {operator_token_env}")
    data = r.json()
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    console = Console()
    rel = Table("model", "version", "stage", "percent", "gates", "reason", title="releases")
    for r in data["releases"]:
        g = r.get("gates") or {}
        gates = " ".join(f"{k}={v}" for k, v in (g.get("values") or {}).items())
        rel.add_row(r["model"], r["version"], r["stage"], f"{r['percent']:g}", gates, r["reason"])
    console.print(rel)
    total = data.get("devices_total", len(data["devices"]))
    title = (
        f"devices (the first {len(data['devices'])} of {total})"
        if total > len(data["devices"])
        else "devices"
    )
    dev = Table(
        "device", "version", "status", "error rate", "p95 ms", "eval", "failed", title=title
    )
    for d in data["devices"]:
        m = d["metrics"]
        dev.add_row(
            d["device_id"],
            d["version"],
            d["status"],
            f"{m['error_rate']:.2f}",
            str(m["p95_ms"]),
            str(m["eval_score"]),
            ",".join(d["failed_versions"]),
        )
    console.print(dev)
    ev = Table("device", "kind", "version", "reason", title="recent events")
    for e in data["events"][:20]:
        ev.add_row(e["device_id"], e["kind"], e["version"], e["reason"][:80])
    console.print(ev)


def agent(
    server: str = typer.Option(..., help="Fleet server URL (https unless on this machine)."),
    models_dir: Path = typer.Option(..., help="Slots, state and TUF metadata live here."),
    node: str = typer.Option(..., help="The local node's base URL, e.g. http://127.0.0.1:8080"),
    model: str = typer.Option(..., help="The model name this box runs."),
    root: Path | None = typer.Option(None, help="Trusted root.json for a new device."),
    device_id: str | None = typer.Option(None, help="Stable device id [generated once]."),
    interval: float = typer.Option(
        1800.0, help="Seconds between polls (Mender's default; the server may ask for longer)."
    ),
    jitter: float = typer.Option(0.2, help="Spread each wait by +- this fraction."),
    max_backoff: float = typer.Option(7200.0, help="Longest wait between polls that fail."),
    canary: Path | None = typer.Option(None, help="YAML list of {prompt, expect, max_tokens}."),
    canary_every: float = typer.Option(300.0, help="Seconds between health canaries."),
    min_eval_score: float = typer.Option(0.5, help="Local canary pass rate to keep a version."),
    admin_token_env: str = typer.Option("EDGECLOUD_ADMIN_TOKEN", help="Env var: node token."),
    enrol_token_env: str = typer.Option(
        ENROL_TOKEN_ENV, help="Env var: enrolment token, spent once for this device's credential."
    ),
    ca_file: Path | None = typer.Option(None, help="CA bundle of the fleet server's certificate."),
    metadata_url: str | None = typer.Option(
        None, help="TUF metadata from this mirror or CDN URL [SERVER/tuf/metadata]."
    ),
    targets_url: str | None = typer.Option(
        None, help="Model files from this mirror or CDN URL [SERVER/tuf/targets]."
    ),
    allow_plain_http: bool = typer.Option(
        False, help="Allow http to a remote fleet server (only behind a trusted TLS proxy)."
    ),
    download_deadline: float = typer.Option(3600.0, help="Seconds one download may take."),
    min_rate: float = typer.Option(1024.0, help="Slowest download rate kept up (bytes/s)."),
    rate_window: float = typer.Option(30.0, help="Seconds over which --min-rate is measured."),
    once: bool = typer.Option(False, help="One poll, then exit."),
) -> None:
    """Keep this edge box on the right signed model version, with automatic rollback.

    Example: EDGECLOUD_ENROL_TOKEN=... edgecloud agent --server https://fleet:8700
    --models-dir /var/lib/edgecloud --node http://127.0.0.1:8080 --model gemma-3-270m
    --root root.json
    """
    from edgecloud.fleet.agent import Agent, AgentConfig
    from edgecloud.fleet.errors import FleetError
    from edgecloud.fleet.node_client import load_canaries
    from edgecloud.fleet.transport import TransferLimits
    from edgecloud.logs import configure_logging

    configure_logging()
    try:
        a = Agent(
            AgentConfig(
                server=server,
                models_dir=models_dir,
                node=node,
                model=model,
                root=root,
                device_id=device_id,
                admin_token=os.environ.get(admin_token_env),
                enrol_token=os.environ.get(enrol_token_env) or None,
                ca_file=ca_file,
                metadata_url=metadata_url,
                targets_url=targets_url,
                allow_plain_http=allow_plain_http,
                interval_s=interval,
                jitter=jitter,
                max_backoff_s=max_backoff,
                limits=TransferLimits(download_deadline, min_rate, rate_window),
                canaries=load_canaries(canary),
                canary_every_s=canary_every,
                min_eval_score=min_eval_score,
            )
        )
        a.run(once=once)
    except FleetError as exc:
        _fail(str(exc))


def register(app: typer.Typer) -> None:
    """Mount `release`, `fleet` and `agent` on the root app."""
    app.add_typer(release_app, name="release")
    app.add_typer(fleet_app, name="fleet")
    app.command("agent")(agent)
