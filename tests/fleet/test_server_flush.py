"""The fleet server's group writes, in-process: a report is answered 204 only once the
database has it, a database that goes away answers 503 (the agent keeps its events and sends
them again), and numbered events are stored once, whichever process takes them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from edgecloud.fleet.repository import ModelRepository
from edgecloud.fleet.server import FleetServer, ServerConfig

Send = Callable[[dict[str, object]], Awaitable[httpx.Response]]


def _report(device: str, kind: str) -> dict[str, object]:
    return {"device_id": device, "events": [{"kind": kind, "version": "1.1.0", "reason": "t"}]}


async def _running(server: FleetServer, scenario: Callable[[Send], Awaitable[None]]) -> None:
    """Run `scenario` against the server with its background tasks (the group writer)."""
    await server._startup()
    try:
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as c:

            async def send(body: dict[str, object]) -> httpx.Response:
                return await c.post("/v1/devices/report", json=body)

            await scenario(send)
    finally:
        await server._shutdown()


def test_a_report_is_answered_only_once_stored(tmp_path: Path) -> None:
    ModelRepository.init(tmp_path / "repo")
    db = tmp_path / "fleet.db"
    server = FleetServer(
        ServerConfig(repo=tmp_path / "repo", db_url=f"sqlite:///{db}", insecure=True)
    )

    def sql(statement: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(db) as conn:
            return list(conn.execute(statement).fetchall())

    async def scenario(send: Send) -> None:
        assert (await send(_report("d1", "refused"))).status_code == 204
        assert sql("SELECT device_id, kind FROM fleet_events") == [("d1", "refused")]
        sql("ALTER TABLE fleet_events RENAME TO gone")  # the database loses the table
        away = await send(_report("d1", "activated"))
        assert away.status_code == 503 and int(away.headers["retry-after"]) >= 1
        assert away.json()["error"]["code"] == "database_unavailable"
        sql("ALTER TABLE gone RENAME TO fleet_events")
        # the agent sends its kept events again, and d2 reports for the first time
        assert (await send(_report("d1", "activated"))).status_code == 204
        assert (await send(_report("d2", "refused"))).status_code == 204

    asyncio.run(_running(server, scenario))
    rows = sorted(sql("SELECT device_id, kind FROM fleet_events"))
    assert rows == [("d1", "activated"), ("d1", "refused"), ("d2", "refused")]
    assert sorted(r[0] for r in sql("SELECT device_id FROM fleet_devices")) == ["d1", "d2"]


def test_numbered_events_are_stored_once_across_processes(tmp_path: Path) -> None:
    """An agent whose report's answer was lost sends the same numbered events again (to any
    process), with new ones; each number is stored once, and a reset agent state (a new event
    stream) starts again. Two servers over one database stand for two replicas."""
    ModelRepository.init(tmp_path / "repo")
    db = tmp_path / "fleet.db"
    config = ServerConfig(repo=tmp_path / "repo", db_url=f"sqlite:///{db}", insecure=True)

    def report(stream: str, *seqs: int) -> dict[str, object]:
        events = [
            {"kind": "refused", "version": "1.1.0", "reason": f"r{n}", "seq": n} for n in seqs
        ]
        return {"device_id": "d1", "events": events, "event_stream": stream}

    def sends(*bodies: dict[str, object]) -> Callable[[Send], Awaitable[None]]:
        async def scenario(send: Send) -> None:
            for body in bodies:
                assert (await send(body)).status_code == 204

        return scenario

    a, b = FleetServer(config), FleetServer(config)
    asyncio.run(_running(a, sends(report("s1", 1, 2), report("s1", 1, 2, 3))))
    asyncio.run(_running(b, sends(report("s1", 2, 3, 4), report("s2", 1))))
    # a replica that read the device's row before another stored the same numbers (a race):
    # the unique index still takes each number once
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE fleet_devices SET events_seen = 0, event_stream = 's1'")
    asyncio.run(_running(FleetServer(config), sends(report("s1", 3, 4, 5))))
    with sqlite3.connect(db) as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM fleet_events ORDER BY id")]
    assert reasons == ["r1", "r2", "r3", "r4", "r1", "r5"]


def test_an_older_database_is_brought_up_to_date(tmp_path: Path) -> None:
    """Tables an older version created (no gate columns, no event numbers) get the new
    columns, and a report to them is stored."""
    ModelRepository.init(tmp_path / "repo")
    db = tmp_path / "fleet.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE fleet_devices (device_id VARCHAR(128) PRIMARY KEY, report TEXT "
            "NOT NULL, updated_at FLOAT NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE fleet_events (id INTEGER PRIMARY KEY, device_id VARCHAR(128) NOT "
            "NULL, at FLOAT NOT NULL, kind VARCHAR(32) NOT NULL, version VARCHAR(64) NOT NULL, "
            "reason TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO fleet_devices VALUES ('old', '{\"device_id\": \"old\"}', 1.0)")
    server = FleetServer(
        ServerConfig(repo=tmp_path / "repo", db_url=f"sqlite:///{db}", insecure=True)
    )

    async def scenario(send: Send) -> None:
        assert (await send(_report("d1", "refused"))).status_code == 204

    asyncio.run(_running(server, scenario))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT device_id, cohort FROM fleet_devices ORDER BY 1").fetchall()
        assert [r[0] for r in rows] == ["d1", "old"] and rows[1][1] == 100.0
        assert conn.execute("SELECT kind FROM fleet_events").fetchall() == [("refused",)]
