"""A small fleet on 127.0.0.1: a release repository, a real fleet server, stand-in nodes and
real agent processes. Model files are few-KB stand-in models (see standin_node.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from edgecloud.fleet.cohort import in_cohort
from edgecloud.fleet.enrolment import request_enrolment_token
from edgecloud.fleet.repository import ModelRepository, repo_lock
from edgecloud.fleet.rollout import Gates, RolloutPlan
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from edgecloud.testing.nginx_cdn import NginxCDN, find_nginx
from tests.fleet.standin_node import dummy_model

MODEL = "tiny"
TOKEN = "test-admin-token"
OPERATOR = "test-operator-token-0123456789"
OPERATOR_AUTH = {"authorization": f"Bearer {OPERATOR}"}
# agents here poll every 0.2 s: well inside the server's report rate
FAST_REPORTS = ("--report-rate", "100", "--report-burst", "100")
T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], timeout_s: float = 20.0, what: str = "") -> T:
    """Poll `fn` until it returns something truthy (a deadline, never a bare sleep)."""
    end = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or fn}")
        time.sleep(0.05)


@pytest.fixture
def rollout_repo(tmp_path: Path) -> Path:
    """A release repository: MODEL 1.0.0 stable and 1.1.0 rolling out at its first stage (50%,
    then 100%; two reports a stage, no soak, p95 under 500 ms)."""
    path = tmp_path / "repo"
    repo = ModelRepository.init(path)
    for version, stable in (("1.0.0", True), ("1.1.0", False)):
        f = tmp_path / f"{version}.gguf"
        f.write_bytes(dummy_model(version))
        repo.add_model(f, MODEL, version, stable=stable)
    plan = RolloutPlan(stages=[50, 100], soak_s=0, min_reports=2, gates=Gates(max_p95_ms=500))
    repo.start_rollout(MODEL, "1.1.0", 50, plan)
    return path


def enrol_device(url: str, device_id: str) -> str:
    """Enrol `device_id` with a token bound to it, as an agent does; its credential."""
    token = request_enrolment_token(url, OPERATOR, device_id=device_id)
    r = httpx.post(
        f"{url}/v1/devices/enrol",
        json={"device_id": device_id},
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["credential"])


def device_ids(percent: float, n: int, inside: bool) -> list[str]:
    """Device ids inside (or outside) the `percent` cohort of MODEL."""
    out = []
    i = 0
    while len(out) < n:
        d = f"dev-{i}"
        if in_cohort(d, MODEL, percent) == inside:
            out.append(d)
        i += 1
    return out


class Device:
    """One edge box: a stand-in node and the agent's models folder."""

    def __init__(
        self, rig: Rig, device_id: str, load_delay: float = 0.0, server_url: str | None = None
    ) -> None:
        self.rig = rig
        self.id = device_id
        self.server_url = server_url or rig.url
        self.enrol_token = rig.enrol_token(device_id)
        self.dir = rig.tmp / device_id
        self.models = self.dir / "models"
        self.dir.mkdir()
        factory = self.dir / "factory.gguf"
        factory.write_bytes(dummy_model("0.0.0"))
        port = free_port()
        self.node_url = f"http://127.0.0.1:{port}"
        self.node = ManagedProcess(
            [
                sys.executable,
                "-m",
                "tests.fleet.standin_node",
                "--port",
                str(port),
                "--model",
                str(factory),
                "--load-delay",
                str(load_delay),
            ],
            f"{self.node_url}/readyz",
            env={"EDGECLOUD_ADMIN_TOKEN": TOKEN},
            log_path=str(self.dir / "node.log"),
            name=f"node-{device_id}",
        )
        self.node.start()
        self.node.wait_ready(30)
        self.agent_proc: ManagedProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"EDGECLOUD_ADMIN_TOKEN": TOKEN, "EDGECLOUD_ENROL_TOKEN": self.enrol_token}

    def agent_args(self, interval: float = 0.2, *extra: str) -> list[str]:
        cdn = self.rig.cdn
        if cdn is not None:  # metadata and models from the CDN; reports to the fleet API
            extra = (
                "--metadata-url",
                f"{cdn.url}/metadata",
                "--targets-url",
                f"{cdn.url}/targets",
                *extra,
            )
        return edgecloud_command(
            "agent",
            "--server",
            self.server_url,
            "--models-dir",
            str(self.models),
            "--node",
            self.node_url,
            "--model",
            MODEL,
            "--root",
            str(self.rig.root_file),
            "--device-id",
            self.id,
            "--interval",
            str(interval),
            "--canary-every",
            "3600",
            *extra,
        )

    def run_once(self, *extra: str) -> subprocess.CompletedProcess[str]:
        self.rig.sync_mirror()
        proc = subprocess.run(
            [*self.agent_args(0.2, *extra), "--once"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        with open(self.dir / "agent.log", "a") as f:
            f.write(proc.stderr)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    def start_agent(self, interval: float = 0.2, *extra: str) -> ManagedProcess:
        self.agent_proc = ManagedProcess(
            self.agent_args(interval, *extra),
            None,
            env=self.env,
            log_path=str(self.dir / "agent.log"),
            name=f"agent-{self.id}",
        ).start()
        return self.agent_proc

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.models / "agent-state.json").read_text()))

    def active_version(self) -> str | None:
        s = self.state()
        return s["slots"][s["active"]]["version"] if s.get("active") else None

    def node_model(self) -> dict[str, Any]:
        r = httpx.get(
            f"{self.node_url}/admin/model", headers={"authorization": f"Bearer {TOKEN}"}, timeout=5
        )
        return dict(r.json())

    def stop(self) -> None:
        if self.agent_proc is not None:
            self.agent_proc.stop()
        self.node.stop()


class Rig:
    """A repository with `tiny 1.0.0` stable, served by a real fleet server; with `mirror`,
    the server also publishes it to a directory behind a real nginx caching proxy (the CDN),
    and agents take metadata and models from there."""

    def __init__(
        self,
        tmp: Path,
        *,
        server_args: tuple[str, ...] = (),
        init: dict[str, Any] | None = None,
        mirror: bool = False,
    ) -> None:
        self.tmp = tmp
        self.cdn: NginxCDN | None = None
        self.copy_to_mirror = mirror  # see sync_mirror
        self.mirror_dir = tmp / "mirror"
        if mirror:
            if find_nginx() is None:
                pytest.skip("nginx not found: apt-get install -y nginx-light to run mirror tests")
            self.mirror_dir.mkdir()
            server_args = (*server_args, "--mirror", str(self.mirror_dir))
            self.cdn = NginxCDN(self.mirror_dir, timestamp_max_age_s=0).start()
        self.repo_path = tmp / "repo"
        self.repo = ModelRepository.init(self.repo_path, **(init or {}))
        self.root_file = tmp / "root.json"
        self.root_file.write_bytes(self.repo.root_file().read_bytes())
        self.files: dict[str, bytes] = {}
        self.publish("1.0.0", stable=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ManagedProcess(
            edgecloud_command(
                "fleet",
                "serve",
                "--repo",
                str(self.repo_path),
                "--port",
                str(self.port),
                "--tick",
                "0.2",
                *FAST_REPORTS,
                *server_args,
            ),
            f"{self.url}/readyz",
            env={"EDGECLOUD_FLEET_TOKEN": OPERATOR},
            log_path=str(tmp / "server.log"),
            name="fleet",
        )
        self.server.start()
        self.server.wait_ready(30)
        self.devices: list[Device] = []

    def sync_mirror(self) -> None:
        """Make the mirror serve exactly what the repository folder holds, tampered files
        included: what a compromised or stale mirror would serve (the server publishes
        signed changes by itself; the tests' attacks edit files behind its back)."""
        if not self.copy_to_mirror:
            return
        for folder in ("targets", "metadata"):  # the timestamp last, as a publisher does
            files = sorted(
                (self.repo_path / folder).rglob("*"), key=lambda p: p.name == "timestamp.json"
            )
            for src in files:
                if not src.is_file():
                    continue
                dest = self.mirror_dir / folder / src.relative_to(self.repo_path / folder)
                data = src.read_bytes()
                if not dest.exists() or dest.read_bytes() != data:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(f".sync-{dest.name}")
                    tmp.write_bytes(data)
                    tmp.replace(dest)

    def edit(self) -> ModelRepository:
        return ModelRepository(self.repo_path)

    def publish(
        self, version: str, behaviour: str = "ok", data: bytes | None = None, stable: bool = False
    ) -> bytes:
        body = data if data is not None else dummy_model(version, behaviour)
        f = self.tmp / f"{MODEL}-{version}.gguf"
        f.write_bytes(body)
        with repo_lock(self.repo_path):
            self.edit().add_model(f, MODEL, version, stable=stable)
        self.files[version] = body
        return body

    def rollout(self, version: str, percent: float, **plan: Any) -> None:
        gates = Gates(**plan.pop("gates", {}))
        with repo_lock(self.repo_path):
            self.edit().start_rollout(MODEL, version, percent, RolloutPlan(gates=gates, **plan))

    def enrol_token(self, device_id: str) -> str:
        """An enrolment token bound to `device_id` (what the operator hands a new box)."""
        return request_enrolment_token(self.url, OPERATOR, device_id=device_id)

    def credential(self, device_id: str) -> str:
        """Enrol `device_id` and return its credential (for tests that post reports)."""
        return enrol_device(self.url, device_id)

    def device(self, device_id: str, **kw: Any) -> Device:
        d = Device(self, device_id, **kw)
        self.devices.append(d)
        return d

    def status(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/v1/fleet/status", headers=OPERATOR_AUTH, timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(self, device_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.status()["events"]
            if e["device_id"] == device_id and (kind is None or e["kind"] == kind)
        ]

    def release(self, version: str) -> dict[str, Any]:
        return next(r for r in self.status()["releases"] if r["version"] == version)

    def close(self) -> None:
        for d in self.devices:
            d.stop()
        self.server.stop()
        if self.cdn is not None:
            self.cdn.stop()


@pytest.fixture
def rig_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Rig]]:
    """Rigs for a test; parametrized indirectly with "mirror", agents go through the CDN."""
    rigs: list[Rig] = []
    via_mirror = getattr(request, "param", "server") == "mirror"

    def make(**kw: Any) -> Rig:
        kw.setdefault("mirror", via_mirror)
        folder = tmp_path / f"rig{len(rigs)}"
        folder.mkdir()
        r = Rig(folder, **kw)
        rigs.append(r)
        return r

    try:
        yield make
    finally:
        for r in rigs:
            r.close()


@pytest.fixture
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    return rig_factory()
