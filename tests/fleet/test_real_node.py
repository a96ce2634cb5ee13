"""End to end with the real `edgecloud serve` on the embedded model: install, update to a new
version (a byte-identical copy published under another version), and a corrupt version that
the node refuses, after which the agent rolls back by itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from edgecloud.fleet.enrolment import request_enrolment_token
from edgecloud.fleet.repository import ModelRepository, repo_lock
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from tests.conftest import start_node
from tests.fleet.conftest import OPERATOR, OPERATOR_AUTH, TOKEN, wait_for

pytestmark = pytest.mark.slow


def test_agent_updates_and_rolls_back_a_real_node(tmp_path: Path, embedded_model_path: str) -> None:
    repo_path = tmp_path / "repo"
    repo = ModelRepository.init(repo_path)
    repo.add_model(embedded_model_path, "gemma-3-270m", "1.0.0", stable=True)
    env = {"EDGECLOUD_ADMIN_TOKEN": TOKEN}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ManagedProcess(
        edgecloud_command("fleet", "serve", "--repo", str(repo_path), "--port", str(port)),
        f"{url}/readyz",
        env={"EDGECLOUD_FLEET_TOKEN": OPERATOR},
        log_path=str(tmp_path / "server.log"),
    )
    models = tmp_path / "models"
    node, node_url = start_node(
        tmp_path, "--preload", "--ctx", "512", "--model-dir", str(models), env=env
    )
    auth = {"authorization": f"Bearer {TOKEN}"}
    args = edgecloud_command(
        "agent",
        "--server",
        url,
        "--models-dir",
        str(models),
        "--node",
        node_url,
        "--model",
        "gemma-3-270m",
        "--root",
        str(repo.root_file()),
        "--device-id",
        "box-1",
        "--once",
    )

    def agent_once() -> None:
        enrol = {"EDGECLOUD_ENROL_TOKEN": enrol_token}
        p = subprocess.run(
            args, env={**os.environ, **env, **enrol}, capture_output=True, text=True, timeout=240
        )
        (tmp_path / "agent.log").open("a").write(p.stderr)
        assert p.returncode == 0, p.stderr[-2000:]

    def node_model() -> dict[str, str]:
        return dict(httpx.get(f"{node_url}/admin/model", headers=auth, timeout=60).json())

    try:
        server.start()
        server.wait_ready(30)
        enrol_token = request_enrolment_token(url, OPERATOR, device_id="box-1")
        node.wait_ready(timeout_s=180)
        agent_once()
        assert node_model()["version"] == "1.0.0"
        assert node_model()["path"] == str(models / "slot-a" / "model.gguf")

        copy = tmp_path / "v1.1.0.gguf"
        shutil.copyfile(embedded_model_path, copy)
        with repo_lock(repo_path):
            ModelRepository(repo_path).add_model(copy, "gemma-3-270m", "1.1.0", stable=True)
        agent_once()
        assert node_model()["version"] == "1.1.0"
        assert node_model()["path"] == str(models / "slot-b" / "model.gguf")
        r = httpx.post(
            f"{node_url}/v1/completions", json={"prompt": "Hi", "max_tokens": 4}, timeout=60
        )
        assert r.status_code == 200

        corrupt = tmp_path / "v1.2.0.gguf"
        corrupt.write_bytes(b"GGUF" + os.urandom(8192))
        with repo_lock(repo_path):
            ModelRepository(repo_path).add_model(corrupt, "gemma-3-270m", "1.2.0", stable=True)
        agent_once()
        assert node_model()["version"] == "1.1.0"
        assert httpx.get(f"{node_url}/readyz", timeout=10).status_code == 200
        status = httpx.get(f"{url}/v1/fleet/status", headers=OPERATOR_AUTH, timeout=10).json()
        assert status["devices"][0]["failed_versions"] == ["1.2.0"]
        wait_for(
            lambda: [
                e
                for e in httpx.get(f"{url}/v1/fleet/status", headers=OPERATOR_AUTH).json()["events"]
                if e["kind"] == "rolled_back" and e["version"] == "1.2.0"
            ],
            what="rolled_back event",
        )
    finally:
        node.stop()
        server.stop()


def test_a_node_still_loading_its_model_is_waited_for_not_swapped_over(tmp_path: Path) -> None:
    from edgecloud.fleet.errors import NodeUnreachable
    from edgecloud.fleet.node_client import NodeClient

    proc, base = start_node(tmp_path, "--preload", env={"EDGECLOUD_ADMIN_TOKEN": TOKEN})
    client = NodeClient(base, TOKEN)
    try:
        # Before the model is in, the node says it is loading; the agent hears "not yet".
        states = []

        def seen_loading() -> bool:
            try:
                r = httpx.get(f"{base}/admin/model", headers={"authorization": f"Bearer {TOKEN}"})
            except httpx.HTTPError:
                return False
            states.append(r.json())
            return r.json().get("state") == "loading" or r.json().get("loaded") is True

        wait_for(seen_loading, what="the node answers", timeout_s=120)
        assert states[-1] == {"id": None, "loaded": False, "state": "loading"}  # load takes s
        with pytest.raises(NodeUnreachable, match="loading"):
            client.current()
        proc.wait_ready(timeout_s=180)
        info = client.current()
        assert info is not None and info["loaded"] is True
    finally:
        client.close()
        proc.stop()
