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
