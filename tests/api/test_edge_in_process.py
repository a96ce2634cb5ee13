"""The shared ASGI edge (lifespan, route table, error envelope) on the gateway and the fleet
server, run in this process: no server process is needed for routing and errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgecloud.fleet.repository import ModelRepository
from edgecloud.fleet.server import FleetServer, ServerConfig
from edgecloud.gateway.app import GatewayApp
from edgecloud.gateway.config import EndpointConfig, GatewayConfig
from edgecloud.logs import AccessLog
from edgecloud.supervise import free_port
from tests.asgi_client import in_process


def _error(r: object) -> dict[str, object]:
    body = r.json()  # type: ignore[attr-defined]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def test_gateway_routes_and_errors_in_process(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: the endpoint is down
    cfg = GatewayConfig(endpoints=[EndpointConfig(name="edge-box", tier="edge", url=dead)])

    async def main() -> None:
        with open(tmp_path / "access.log", "wb") as sink:
            app = GatewayApp(cfg, log=AccessLog("edgecloud.gateway", sink))
            async with in_process(app) as client:
                assert (await client.get("/healthz")).json() == {"status": "ok"}
                r = await client.get("/readyz")
                assert r.status_code == 503 and r.json()["available"] == []
                r = await client.get("/v1/chat/completions")
                assert r.status_code == 405 and _error(r)["code"] == "method_not_allowed"
                r = await client.get("/nowhere")
                assert r.status_code == 404 and _error(r)["code"] == "not_found"
                r = await client.post("/v1/chat/completions", content=b"{not json")
                assert r.status_code == 400 and _error(r)["type"] == "invalid_request_error"
                r = await client.post("/v1/chat/completions",
                                      json={"model": "m", "messages": [
                                          {"role": "user", "content": "hi"}]})
                assert r.status_code in (502, 503)  # the only endpoint is down: fail closed
                assert r.headers["x-edgecloud-reason"]
        text = (tmp_path / "access.log").read_text()
        assert '"logger":"edgecloud.gateway","event":"request"' in text and "hi" not in text

    asyncio.run(main())


def test_fleet_server_routes_and_errors_in_process(tmp_path: Path) -> None:
    ModelRepository.init(tmp_path / "repo")
    cfg = ServerConfig(repo=tmp_path / "repo", db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
                       controller=False)

    async def main() -> None:
        async with in_process(FleetServer(cfg)) as client:
            assert (await client.get("/readyz")).json() == {"status": "ok"}
            r = await client.get("/tuf/metadata/1.root.json")
            assert r.status_code == 200 and r.json()["signed"]["_type"] == "root"
            r = await client.get("/tuf/metadata/../../etc/passwd")
            assert r.status_code == 404 and _error(r)["code"] == "not_found"
            r = await client.get("/v1/devices/report")
            assert r.status_code == 405 and _error(r)["code"] == "method_not_allowed"
            r = await client.post("/v1/devices/report", content=b"{}")
            assert r.status_code == 422 and _error(r)["code"] == "invalid_report"
            r = await client.get("/v1/fleet/status")
            assert r.status_code == 200 and r.json()["devices"] == []
            metrics = (await client.get("/metrics")).text
            assert 'route="report",status="422"' in metrics

    asyncio.run(main())
