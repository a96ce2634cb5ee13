"""The fleet server's HTTP edges: ranges, path safety, report validation, device token."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from edgecloud.fleet.repository import ModelRepository
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port


def test_server_edges(tmp_path: Path) -> None:
    repo = ModelRepository.init(tmp_path / "repo")
    model = tmp_path / "m.gguf"
    model.write_bytes(bytes(range(256)) * 40)
    rel = repo.add_model(model, "m", "1.0.0", stable=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        ManagedProcess(
            edgecloud_command(
                "fleet",
                "serve",
                "--repo",
                str(tmp_path / "repo"),
                "--port",
                str(port),
                "--device-token-env",
                "FLEET_TEST_TOKEN",
            ),
            f"{url}/readyz",
            env={"FLEET_TEST_TOKEN": "dev-secret"},
            log_path=str(tmp_path / "server.log"),
        ),
        httpx.Client(base_url=url, timeout=10) as c,
    ):
        target = f"/tuf/targets/models/m/1.0.0/{rel.sha256}.m-1.0.0.gguf"
        assert c.get(target).content == model.read_bytes()
        r = c.get(target, headers={"range": "bytes=10000-"})
        assert r.status_code == 206 and r.content == model.read_bytes()[10000:]
        assert r.headers["content-range"] == "bytes 10000-10239/10240"
        assert c.get(target, headers={"range": "bytes=99999-"}).status_code == 416
        assert c.get("/tuf/targets/../keys/x.pem").status_code == 404
        assert c.get("/tuf/metadata/..%2Fkeys").status_code == 404
        assert c.get("/tuf/metadata/1.root.json").status_code == 200
        assert c.get("/tuf/metadata/2.root.json").status_code == 404
        report = {"device_id": "d1", "model": "m", "version": "1.0.0"}
        assert c.post("/v1/devices/report", json=report).status_code == 401
        auth = {"authorization": "Bearer dev-secret"}
        bad = c.post("/v1/devices/report", json={"device_id": ""}, headers=auth)
        assert bad.status_code == 422 and "device_id" in bad.json()["error"]["message"]
        assert c.post("/v1/devices/report", content=b"{", headers=auth).status_code == 422
        assert c.post("/v1/devices/report", json=report, headers=auth).status_code == 204
        status = c.get("/v1/fleet/status").json()
        assert status["devices"][0]["device_id"] == "d1"
        assert status["releases"][0]["stage"] == "stable"
        out = subprocess.run(
            edgecloud_command("fleet", "status", "--server", url),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and "d1" in out.stdout and "stable" in out.stdout
