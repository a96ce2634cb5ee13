"""The fleet server's batched writes, in-process: events leave memory only once written, so a
database that goes away loses nothing and writes nothing twice when it comes back."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from edgecloud.fleet.repository import ModelRepository
from edgecloud.fleet.server import FleetServer, ServerConfig


def _report(device: str, kind: str) -> dict[str, object]:
    return {"device_id": device, "events": [{"kind": kind, "version": "1.1.0", "reason": "t"}]}


def test_events_stay_buffered_until_the_database_has_them(tmp_path: Path) -> None:
    ModelRepository.init(tmp_path / "repo")
    db = tmp_path / "fleet.db"
    server = FleetServer(
        ServerConfig(repo=tmp_path / "repo", db_url=f"sqlite:///{db}", insecure=True)
    )

    def sql(statement: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(db) as conn:
            return list(conn.execute(statement).fetchall())

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as c:
            assert (
                await c.post("/v1/devices/report", json=_report("d1", "refused"))
            ).status_code == 204
            sql("ALTER TABLE fleet_events RENAME TO gone")  # the database loses the table
            with pytest.raises(OperationalError):
                await server.flush()
            # d1 reports again and d2 for the first time while the database is away
            assert (
                await c.post("/v1/devices/report", json=_report("d1", "activated"))
            ).status_code == 204
            assert (
                await c.post("/v1/devices/report", json=_report("d2", "refused"))
            ).status_code == 204
            with pytest.raises(OperationalError):
                await server.flush()
            sql("ALTER TABLE gone RENAME TO fleet_events")
            await server.flush()
            await server.flush()  # nothing left: nothing written twice
            assert not server._dirty

    asyncio.run(scenario())
    server.store.close()
    rows = sorted(sql("SELECT device_id, kind FROM fleet_events"))
    assert rows == [("d1", "activated"), ("d1", "refused"), ("d2", "refused")]
    assert sorted(r[0] for r in sql("SELECT device_id FROM fleet_devices")) == ["d1", "d2"]


def test_a_resent_report_does_not_store_its_events_twice(tmp_path: Path) -> None:
    """An agent whose report's answer was lost sends the same numbered events again, with new
    ones; the server takes each number once, across its own restart, and a reset agent state
    (a new event stream) starts again."""
    ModelRepository.init(tmp_path / "repo")
    db = tmp_path / "fleet.db"
    config = ServerConfig(repo=tmp_path / "repo", db_url=f"sqlite:///{db}", insecure=True)

    def report(stream: str, *seqs: int) -> dict[str, object]:
        events = [{"kind": "refused", "version": "1.1.0", "reason": f"r{n}", "seq": n}
                  for n in seqs]
        return {"device_id": "d1", "events": events, "event_stream": stream}

    async def send(server: FleetServer, *reports: dict[str, object]) -> None:
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as c:
            for body in reports:
                assert (await c.post("/v1/devices/report", json=body)).status_code == 204
        await server.flush()

    server = FleetServer(config)
    asyncio.run(send(server, report("s1", 1, 2), report("s1", 1, 2, 3)))
    server.store.close()
    server = FleetServer(config)  # restarted: what it took is read back from the database
    asyncio.run(send(server, report("s1", 2, 3, 4), report("s2", 1)))
    server.store.close()
    with sqlite3.connect(db) as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM fleet_events ORDER BY id")]
    assert reasons == ["r1", "r2", "r3", "r4", "r1"]
