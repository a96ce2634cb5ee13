"""Two `fleet serve` processes over one real PostgreSQL, as two replicas of a stateless fleet
API: a device enrolled on one reports to the other, both show it, events are stored once,
the enrolment limit and --max-devices hold fleet-wide, and exactly one runs the controller;
when its process is killed the other takes over and the rollout neither stalls nor steps twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fleet.conftest import MODEL, OPERATOR_AUTH, device_ids, enrol_device, wait_for
from tests.fleet.postgres import PostgresServer, postgres_server
from tests.fleet.test_postgres import FleetServer


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    yield from postgres_server()


def _post_report(url: str, cred: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/devices/report",
        json={"model": MODEL, **body},
        headers={"authorization": f"Bearer {cred}"},
        timeout=10,
    )


def _log_events(log: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if f'"event":"{event}"' in line.replace(" ", ""):
            out.append(json.loads(line[line.index("{") :]))
    return out


def test_enrol_on_one_replica_report_to_the_other(
    pg: PostgresServer, tmp_path: Path, rollout_repo: Path
) -> None:
    db = pg.create_database("fleet_replicas_api")
    repo = rollout_repo
    args = ("--db", pg.url(db), "--no-controller", "--max-devices", "3")
    with (
        FleetServer(repo, tmp_path / "a.log", *args) as a,
        FleetServer(repo, tmp_path / "b.log", *args) as b,
    ):
        cred = enrol_device(a.url, "dev-x")
        events = [
            {"kind": "refused", "version": "1.1.0", "reason": f"r{n}", "seq": n} for n in (1, 2)
        ]
        body = {"device_id": "dev-x", "version": "1.0.0", "event_stream": "s1", "events": events}
        assert _post_report(b.url, cred, body).status_code == 204
        # the answer was lost: the agent sends the same numbered events to the other replica
        assert _post_report(a.url, cred, body).status_code == 204
        for s in (a, b):
            status = s.status()
            assert [d["device_id"] for d in status["devices"]] == ["dev-x"]
            assert sorted(e["reason"] for e in status["events"]) == ["r1", "r2"]
        # a re-enrolled device's old credential stops working on both at once
        again = enrol_device(b.url, "dev-x")
        assert _post_report(a.url, cred, body).status_code == 401
        assert _post_report(a.url, again, body).status_code == 204
        # the fleet holds at most 3 devices, counted in the database: not 3 per replica
        codes = [_enrol_new(s, f"dev-{i}") for i, s in enumerate([a, b] * 2)]
        assert codes == [200, 200, 403, 403]

    # the fleet-wide enrolment bucket (a burst of 3, next to no refill) is shared too
    db2 = pg.create_database("fleet_replicas_bucket")
    bucket = ("--db", pg.url(db2), "--no-controller", "--enrol-rate", "0.001", "--enrol-burst", "3")
    with (
        FleetServer(repo, tmp_path / "c.log", *bucket) as c,
        FleetServer(repo, tmp_path / "d.log", *bucket) as d,
    ):
        codes = [_enrol_new(s, f"dev-{i}") for i, s in enumerate([c, d] * 3)]
        assert codes == [200, 200, 200, 429, 429, 429]


def _enrol_new(server: FleetServer, device_id: str) -> int:
    token = httpx.post(
        f"{server.url}/v1/fleet/enrolment-tokens",
        json={"device_id": device_id},
        headers=OPERATOR_AUTH,
        timeout=10,
    ).json()["token"]
    r = httpx.post(
        f"{server.url}/v1/devices/enrol",
        json={"device_id": device_id},
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    return r.status_code


def test_one_controller_and_a_takeover_when_it_dies(
    pg: PostgresServer, tmp_path: Path, rollout_repo: Path
) -> None:
    db = pg.create_database("fleet_replicas_controller")
    repo = rollout_repo
    logs = {"a": tmp_path / "a.log", "b": tmp_path / "b.log"}
    a = FleetServer(repo, logs["a"], "--db", pg.url(db))
    b = FleetServer(repo, logs["b"], "--db", pg.url(db))
    with a, b:
        servers = {"a": a, "b": b}
        leader = wait_for(
            lambda: [n for n in logs if _log_events(logs[n], "controller.lease_taken")],
            what="a controller",
        )
        assert len(leader) == 1  # exactly one holds the lease
        other = "b" if leader[0] == "a" else "a"
        servers[leader[0]].proc.kill()  # SIGKILL: no goodbye, its session just ends
        wait_for(
            lambda: _log_events(logs[other], "controller.lease_taken"),
            what="the survivor to take over",
        )
        # the survivor's controller moves the rollout on with reports sent to it
        survivor = servers[other]
        for d in device_ids(50, 2, inside=True):
            survivor.report(d, "1.1.0", p95_ms=100)
        wait_for(lambda: survivor.release("1.1.0")["stage"] == "stable", what="stable")
    steps = [e for log in logs.values() for e in _log_events(log, "rollout.step")]
    assert [(s["action"], s["percent"]) for s in steps] == [("advance", 100), ("complete", 100)]
