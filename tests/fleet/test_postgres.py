"""The fleet server on a real PostgreSQL server: device reports, events and the rollout
controller's input survive restarts, and the database password stays out of argv and logs.

Skipped when the PostgreSQL server binaries are absent (Debian: apt-get install postgresql).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.fleet.repository import ModelRepository
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from tests.fleet.conftest import (
    MODEL,
    OPERATOR,
    OPERATOR_AUTH,
    device_ids,
    enrol_device,
    wait_for,
)
from tests.fleet.postgres import PASSWORD, PostgresServer, postgres_server


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    yield from postgres_server()


class FleetServer:
    """`edgecloud fleet serve` as a real process on a free port. Device credentials live in
    the database, so they are kept per repository (one database each) across servers."""

    credentials: dict[tuple[Path, str], str] = {}

    def __init__(self, repo: Path, log: Path, *args: str, env: dict[str, str] | None = None):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.repo = repo
        self.log = log
        self.proc = ManagedProcess(
            edgecloud_command(
                "fleet",
                "serve",
                "--repo",
                str(repo),
                "--port",
                self.url.rsplit(":", 1)[1],
                "--tick",
                "0.2",
                *args,
            ),
            f"{self.url}/readyz",
            env={"EDGECLOUD_FLEET_TOKEN": OPERATOR, **(env or {})},
            log_path=str(log),
            name="fleet",
        )

    def __enter__(self) -> FleetServer:
        self.proc.start()
        self.proc.wait_ready(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()  # SIGTERM: the server flushes pending reports before it exits

    def status(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/v1/fleet/status", headers=OPERATOR_AUTH).json())

    def release(self, version: str) -> dict[str, Any]:
        return next(r for r in self.status()["releases"] if r["version"] == version)

    def report(self, device_id: str, version: str, p95_ms: float, event: str = "") -> None:
        body: dict[str, Any] = {
            "device_id": device_id,
            "model": MODEL,
            "version": version,
            "metrics": {"error_rate": 0.0, "p95_ms": p95_ms, "eval_score": 1.0},
        }
        if event:
            body["events"] = [{"kind": event, "version": version, "reason": "test"}]
        r = httpx.post(
            f"{self.url}/v1/devices/report", json=body, headers=self.auth(device_id), timeout=10
        )
        assert r.status_code == 204, r.text

    def auth(self, device_id: str) -> dict[str, str]:
        key = (self.repo, device_id)
        if key not in self.credentials:
            self.credentials[key] = enrol_device(self.url, device_id)
        return {"authorization": f"Bearer {self.credentials[key]}"}


def _rows(pg: PostgresServer, db: str, sql: str) -> list[tuple[Any, ...]]:
    with pg.connect(db) as conn:
        return list(conn.execute(sql).fetchall())


def test_reports_and_the_controller_round_trip_through_postgresql(
    pg: PostgresServer, tmp_path: Path, rollout_repo: Path
) -> None:
    db = pg.create_database("fleet_roundtrip")
    repo = rollout_repo
    canaries = device_ids(50, 2, inside=True)
    others = device_ids(50, 2, inside=False)

    # 1. reports arrive while the controller is off: nothing may move yet
    with FleetServer(repo, tmp_path / "s1.log", "--db", pg.url(db), "--no-controller") as s1:
        for d in canaries:
            s1.report(d, "1.1.0", p95_ms=120, event="activated")
        for d in others:
            s1.report(d, "1.0.0", p95_ms=90)
        assert len(s1.status()["devices"]) == 4
    assert not (repo / "fleet.db").exists()  # not SQLite by mistake
    rows = _rows(pg, db, "SELECT device_id, report FROM fleet_devices ORDER BY device_id")
    assert sorted(r[0] for r in rows) == sorted(canaries + others)
    assert all('"p95_ms":' in r[1] for r in rows)
    events = _rows(pg, db, "SELECT device_id, kind, version FROM fleet_events")
    assert sorted(events) == sorted((d, "activated", "1.1.0") for d in canaries)

    # 2. a new server on the same database: the controller sees the stored reports (no new
    # report arrives) and walks the rollout 50% -> 100% -> stable
    with FleetServer(repo, tmp_path / "s2.log", "--db", pg.url(db)) as s2:
        status = s2.status()
        assert {d["device_id"]: d["version"] for d in status["devices"]} == {
            **dict.fromkeys(canaries, "1.1.0"),
            **dict.fromkeys(others, "1.0.0"),
        }
        assert len(status["events"]) == 2
        wait_for(lambda: s2.release("1.1.0")["stage"] == "stable", what="rollout complete")

    # 3. and again: devices, metrics, events and the stage are all still there
    with FleetServer(repo, tmp_path / "s3.log", "--db", pg.url(db), "--no-controller") as s3:
        status = s3.status()
        assert len(status["devices"]) == 4
        assert {d["metrics"]["p95_ms"] for d in status["devices"]} == {120, 90}
        assert len(status["events"]) == 2  # stored once, not duplicated by restarts
        rel = s3.release("1.1.0")
        assert (rel["stage"], rel["percent"]) == ("stable", 100)


def test_bad_reports_stored_in_postgresql_abort_after_a_restart(
    pg: PostgresServer, tmp_path: Path, rollout_repo: Path
) -> None:
    db = pg.create_database("fleet_abort")
    repo = rollout_repo
    with FleetServer(repo, tmp_path / "s1.log", "--db", pg.url(db), "--no-controller") as s1:
        for d in device_ids(50, 2, inside=True):
            s1.report(d, "1.1.0", p95_ms=2000)  # breaks the 500 ms gate
    with FleetServer(repo, tmp_path / "s2.log", "--db", pg.url(db)) as s2:
        rel = wait_for(lambda: (r := s2.release("1.1.0"))["stage"] == "aborted" and r, what="abort")
        assert "p95_ms" in rel["reason"]


def test_db_env_keeps_the_password_out_of_argv_and_logs(
    pg: PostgresServer, tmp_path: Path, rollout_repo: Path
) -> None:
    db = pg.create_database("fleet_env")
    repo = rollout_repo
    log = tmp_path / "server.log"
    # a bare postgresql:// URL works too (it means psycopg 3, the driver edgecloud ships)
    env = {"FLEET_TEST_DB": pg.url(db, driver="postgresql")}
    with FleetServer(repo, log, "--db-env", "FLEET_TEST_DB", "--no-controller", env=env) as s:
        argv = Path(f"/proc/{s.proc.pid}/cmdline").read_bytes()
        assert b"FLEET_TEST_DB" in argv and PASSWORD.encode() not in argv
        s.report("dev-env", "1.0.0", p95_ms=50)
    assert _rows(pg, db, "SELECT device_id FROM fleet_devices") == [("dev-env",)]
    text = log.read_text()
    assert f"fleet:***@127.0.0.1:{pg.port}/{db}" in text
    assert PASSWORD not in text

    # a wrong password: a clean error naming the masked URL, the password nowhere
    wrong = pg.url(db).replace(PASSWORD, "not-the-pw-9d2b")
    out = _serve_once(repo, "--db-env", "FLEET_TEST_DB", env={"FLEET_TEST_DB": wrong})
    assert out.returncode == 1
    assert "cannot use the fleet database" in out.stderr
    assert "password authentication failed" in out.stderr
    assert "fleet:***@" in out.stderr and "not-the-pw-9d2b" not in out.stderr


def _serve_once(repo: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = edgecloud_command("fleet", "serve", "--repo", str(repo), "--port", str(free_port()))
    env = {**os.environ, "EDGECLOUD_FLEET_TOKEN": OPERATOR, **env}
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=60)


def test_db_flag_errors_never_echo_the_url(tmp_path: Path) -> None:
    """No PostgreSQL needed: argument errors fail before any connection."""
    repo = tmp_path / "repo"
    ModelRepository.init(repo)
    unset = _serve_once(repo, "--db-env", "FLEET_TEST_DB_UNSET", env={})
    assert unset.returncode == 1 and "FLEET_TEST_DB_UNSET is not set" in unset.stderr
    both = _serve_once(repo, "--db", "sqlite://", "--db-env", "X", env={"X": "sqlite://"})
    assert both.returncode == 1 and "not both" in both.stderr
    garbled = _serve_once(repo, "--db-env", "X", env={"X": "no url here s3cr3t-pw"})
    assert garbled.returncode == 1 and "not a SQLAlchemy URL" in garbled.stderr
    assert "s3cr3t-pw" not in garbled.stderr + garbled.stdout
