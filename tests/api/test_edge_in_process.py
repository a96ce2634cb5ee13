"""The shared ASGI edge (lifespan, route table, error envelope) on the gateway and the fleet
server, run in this process: no server process is needed for routing and errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from edgecloud.fleet.repository import ModelRepository
from edgecloud.fleet.server import FleetServer, ServerConfig
from edgecloud.gateway.app import GatewayApp
from edgecloud.gateway.config import EndpointConfig, GatewayConfig
from edgecloud.logs import AccessLog
from edgecloud.supervise import free_port
from tests.asgi_client import in_process


async def _expect_errors(client: httpx.AsyncClient,
                         cases: list[tuple[str, str, bytes | None, int, str | None]]) -> None:
    """Each (method, path, body, status, error code): an OpenAI error envelope with that code."""
    for method, path, body, status, code in cases:
        r = await client.request(method, path, content=body)
        assert r.status_code == status, (path, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code


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
                await _expect_errors(client, [
                    ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
                    ("GET", "/nowhere", None, 404, "not_found"),
                    ("POST", "/v1/chat/completions", b"[1]", 400, None),
                ])
                r = await client.post("/v1/chat/completions", content=b"{not json")
                assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
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
    operator = {"authorization": "Bearer operator-token-for-tests"}
    cfg = ServerConfig(repo=tmp_path / "repo", db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
                       controller=False, operator_token="operator-token-for-tests")

    async def main() -> None:
        async with in_process(FleetServer(cfg)) as client:
            assert (await client.get("/readyz")).json() == {"status": "ok"}
            r = await client.get("/tuf/metadata/1.root.json")
            assert r.status_code == 200 and r.json()["signed"]["_type"] == "root"
            await _expect_errors(client, [
                ("GET", "/tuf/metadata/../../etc/passwd", None, 404, "not_found"),
                ("GET", "/v1/devices/report", None, 405, "method_not_allowed"),
                ("POST", "/v1/devices/report", b"{}", 401, "invalid_token"),
                ("GET", "/v1/fleet/status", None, 401, "invalid_token"),
                ("GET", "/metrics", None, 401, "invalid_token"),
            ])
            r = await client.get("/v1/fleet/status", headers=operator)
            assert r.status_code == 200 and r.json()["devices"] == []
            metrics = (await client.get("/metrics", headers=operator)).text
            assert 'route="report",status="401"' in metrics

    asyncio.run(main())
