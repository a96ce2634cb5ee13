"""The parts under test, started for real on 127.0.0.1: two nodes, a gateway, a fleet server,
an agent, a stand-in cloud provider, and the links in between.

- edge-local: `edgecloud serve` on the embedded model; the agent manages its model slot.
- cloud-eu: a second `edgecloud serve` behind the demo's emulated WAN link; a recording tap on
  that link sees every byte that leaves towards it.
- cloud-us: the stand-in cloud provider (`edgecloud.testing.standin_provider`: it records what
  it receives and can misbehave on command), in a region EU data may not go to.
- fleet: `edgecloud fleet serve` on a repository holding the embedded model as 1.0.0 (stable);
  the agent (enrolled with a one-use token) reaches it through `edgecloud.testing.faulty_link`,
  which can drop, garble or trickle.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from edgecloud.demo.wan import LinkProfile, WanLink
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from edgecloud.testing.chaos.traffic import CLOUD_EU, CLOUD_US, EDGE, MARKER_RE
from edgecloud.testing.faulty_link import FaultyLink
from edgecloud.testing.polling import wait_until

MODEL = "gemma-3-270m"
ADMIN_TOKEN = "chaos-admin-token"  # the node's admin token (agent -> node swaps)
OPERATOR_TOKEN = "chaos-operator-token-0123456789abcdef"  # the fleet server's operator token
DEVICE_ID = "chaos-box-1"


class RecordingTap:
    """Sits on the WAN link towards the cloud node: records every marker that crossed it."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._tail = b""
        self._re = re.compile(MARKER_RE)
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        window = self._tail + data
        with self._lock:
            self.seen.update(m.decode() for m in self._re.findall(window))
        self._tail = window[-16:]


@dataclass
class Part:
    """A process of the stack, and how to start it again after a fault."""

    name: str
    proc: ManagedProcess
    make: Callable[[], ManagedProcess]
    ready_timeout_s: float = 180.0

    def restart(self) -> None:
        self.proc.stop(timeout_s=5)
        self.proc = self.make().start()
        if self.proc.ready_url is not None:
            self.proc.wait_ready(self.ready_timeout_s)


@dataclass
class StackConfig:
    """What the stack runs: the model, the node's slots and context, the gateway's health
    interval, the fleet server's database and the simulated WAN's round trip."""

    out_dir: Path
    model_path: str
    health_interval_s: float = 0.5
    edge_parallel: int = 2
    ctx: int = 1024
    with_fleet: bool = True
    fleet_db: str = "sqlite"  # or "postgres": a throwaway server from the distribution's binaries
    rtt_ms: float = 20.0


@dataclass
class ChaosStack:
    cfg: StackConfig
    parts: dict[str, Part] = field(default_factory=dict)
    tap: RecordingTap = field(default_factory=RecordingTap)
    wan: WanLink | None = None
    fleet_link: FaultyLink | None = None
    postgres: Any = None  # a testing.postgres.PostgresServer when cfg.fleet_db is "postgres"
    ports: dict[str, int] = field(default_factory=dict)

    # -- urls ----------------------------------------------------------------------------------
    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def edge(self) -> str:
        return f"http://127.0.0.1:{self.ports[EDGE]}"

    @property
    def standin(self) -> str:
        return f"http://127.0.0.1:{self.ports[CLOUD_US]}"

    # -- start and stop ------------------------------------------------------------------------
    def _log(self, name: str) -> str:
        return str(self.cfg.out_dir / f"{name}.log")

    def committed_model(self) -> str:
        """The model a box's supervisor starts its node on: the agent's committed slot once it
        has one (as a deployment points the node at it), else the shipped model."""
        from edgecloud.fleet.slots import SlotStore

        store = SlotStore(self.cfg.out_dir / "agent-models")
        state = store.load()
        return str(store.model_path(state.active)) if state.active else self.cfg.model_path

    def _node(self, name: str, parallel: int, *extra: str) -> Callable[[], ManagedProcess]:
        port = self.ports[name]
        cfg = self.cfg

        def make() -> ManagedProcess:
            model = self.committed_model() if name == EDGE else cfg.model_path
            return ManagedProcess(
                edgecloud_command(
                    "serve", "--model", model, "--port", str(port), "--preload",
                    "--parallel", str(parallel), "--ctx", str(cfg.ctx), "--threads", "1",
                    "--max-queue", "8", *extra),
                f"http://127.0.0.1:{port}/readyz", log_path=self._log(name), name=name,
                env={"EDGECLOUD_ADMIN_TOKEN": ADMIN_TOKEN})
        return make

    def _standin(self) -> ManagedProcess:
        port = self.ports[CLOUD_US]
        return ManagedProcess(
            [sys.executable, "-m", "edgecloud.testing.standin_provider", "--port", str(port),
             "--name", CLOUD_US, "--model-id", MODEL],
            f"http://127.0.0.1:{port}/healthz", log_path=self._log(CLOUD_US), name=CLOUD_US)

    def gateway_config(self) -> dict[str, Any]:
        assert self.wan is not None
        return {
            "endpoints": [
                {"name": EDGE, "tier": "edge", "url": f"{self.edge}/v1", "region": "device",
                 "capabilities": ["text"], "max_concurrency": self.cfg.edge_parallel,
                 "timeout_s": 60, "price": {"input_per_mtok": 0.0, "output_per_mtok": 0.0}},
                {"name": CLOUD_EU, "tier": "cloud", "url": f"http://127.0.0.1:{self.wan.port}/v1",
                 "region": "eu-central-1", "capabilities": ["text"], "max_concurrency": 8,
                 "timeout_s": 30, "price": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}},
                {"name": CLOUD_US, "tier": "cloud", "url": f"{self.standin}/v1",
                 "region": "us-east-1", "capabilities": ["text", "vision"], "timeout_s": 3,
                 "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}},
            ],
            "policy": {
                "residency": {"eu": ["eu-central-1", "device"], "cn": ["device"]},
                "privacy": {"detect": ["email", "phone", "id_card", "bank_card", "iban", "ip",
                                       "secret"],
                            "action": "edge_only", "images": "edge_only"},
                "offload": {"edge_queue_above": 1},
            },
            # An open breaker waits half a probe interval: the first passing probe after a part
            # is back then closes it unless the part failed within the last half interval.
            "limits": {"health_interval_s": self.cfg.health_interval_s, "breaker_failures": 2,
                       "breaker_open_s": self.cfg.health_interval_s / 2},
        }

    def _gateway(self) -> ManagedProcess:
        port = self.ports["gateway"]
        path = self.cfg.out_dir / "gateway.yaml"
        path.write_text(yaml.safe_dump(self.gateway_config(), sort_keys=False))
        return ManagedProcess(
            edgecloud_command("gateway", "--config", str(path), "--port", str(port)),
            f"http://127.0.0.1:{port}/healthz", log_path=self._log("gateway"), name="gateway")

    def _fleet(self) -> ManagedProcess:
        port = self.ports["fleet"]
        db: tuple[str, ...] = ()
        env = {"EDGECLOUD_FLEET_TOKEN": OPERATOR_TOKEN}
        if self.postgres is not None:
            db = ("--db-env", "CHAOS_FLEET_DB")
            env["CHAOS_FLEET_DB"] = self.postgres.url("fleet")
        return ManagedProcess(
            edgecloud_command("fleet", "serve", "--repo", str(self.repo), "--port", str(port),
                              "--tick", "0.5", *db),
            f"http://127.0.0.1:{port}/readyz", log_path=self._log("fleet"), name="fleet",
            env=env)

    def _agent(self) -> ManagedProcess:
        assert self.fleet_link is not None
        return ManagedProcess(
            edgecloud_command(
                "agent", "--server", self.fleet_link.url,
                "--models-dir", str(self.cfg.out_dir / "agent-models"), "--node", self.edge,
                "--model", MODEL, "--root", str(self.root_file), "--device-id", DEVICE_ID,
                "--interval", "1", "--max-backoff", "2", "--canary-every", "3600",
                "--rate-window", "5", "--min-rate", "4096"),
            None, log_path=self._log("agent"), name="agent",
            env={"EDGECLOUD_ADMIN_TOKEN": ADMIN_TOKEN, "EDGECLOUD_ENROL_TOKEN": self.enrol_token})

    def _add(self, name: str, make: Callable[[], ManagedProcess], timeout_s: float = 180) -> Part:
        part = Part(name, make().start(), make, timeout_s)
        self.parts[name] = part
        return part

    def start(self) -> None:
        from edgecloud.node.model import file_sha256

        cfg = self.cfg
        self.model_sha256 = file_sha256(cfg.model_path)
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        for name in (EDGE, CLOUD_EU, CLOUD_US, "gateway", "fleet"):
            self.ports[name] = free_port()
        edge = self._add(EDGE, self._node(EDGE, cfg.edge_parallel, "--model-dir",
                                          str(cfg.out_dir / "agent-models")))
        cloud = self._add(CLOUD_EU, self._node(CLOUD_EU, 2))
        standin = self._add(CLOUD_US, self._standin, 30)
        self.wan = WanLink("127.0.0.1", self.ports[CLOUD_EU],
                           LinkProfile(rtt_ms=cfg.rtt_ms, jitter_ms=2, bandwidth_mbit=100),
                           tap=self.tap)  # type: ignore[arg-type]
        self.wan.start()
        for p in (edge, cloud, standin):
            p.proc.wait_ready(p.ready_timeout_s)
        gw = self._add("gateway", self._gateway, 60)
        gw.proc.wait_ready(60)
        if cfg.with_fleet:
            self._start_fleet()

    def _start_fleet(self) -> None:
        from edgecloud.fleet.repository import ModelRepository

        self.repo = self.cfg.out_dir / "repo"
        repo = ModelRepository.init(self.repo)
        repo.add_model(self.cfg.model_path, MODEL, "1.0.0", stable=True, link=True)
        self.root_file = repo.root_file()
        if self.cfg.fleet_db == "postgres":
            from edgecloud.testing.postgres import PostgresServer, find_bin_dir

            bin_dir = find_bin_dir()
            if bin_dir is None:
                raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")
            self.postgres = PostgresServer(bin_dir).start()
            self.postgres.create_database("fleet")
        fleet = self._add("fleet", self._fleet, 60)
        fleet.proc.wait_ready(60)
        from edgecloud.fleet.enrolment import request_enrolment_token

        # One use: the agent keeps the credential it gets for it, and uses that after restarts.
        self.enrol_token = request_enrolment_token(
            f"http://127.0.0.1:{self.ports['fleet']}", OPERATOR_TOKEN, device_id=DEVICE_ID)
        self.fleet_link = FaultyLink(self.ports["fleet"]).__enter__()
        self._add("agent", self._agent, 0)
        self.wait_agent_event("agent.activated", 240)

    def wait_agent_event(self, event: str, timeout_s: float) -> None:
        """Wait until the agent's log shows `event` (its first install swaps the edge node's
        model: faults start after it, so that swap is not taken for a slow recovery)."""
        log = Path(self._log("agent"))

        def logged() -> bool:
            if not self.parts["agent"].proc.alive():
                raise RuntimeError(f"the agent exited; see {log}")
            return f'"{event}"' in (log.read_text(errors="replace") if log.exists() else "")

        wait_until(logged, timeout_s, f"the agent logging {event}", 0.2)

    @property
    def db_path(self) -> Path:
        return self.repo / "fleet.db"

    def stop(self) -> None:
        for name in ("agent", "gateway", "fleet", EDGE, CLOUD_EU, CLOUD_US):
            part = self.parts.get(name)
            if part is not None:
                part.proc.kill(signal.SIGCONT)  # a stopped process cannot drain
                part.proc.stop(timeout_s=10)
        if self.wan is not None:
            self.wan.stop()
        if self.fleet_link is not None:
            self.fleet_link.__exit__(None, None, None)
        if self.postgres is not None:
            self.postgres.stop()

    # -- what the cloud side received ------------------------------------------------------------
    def received_markers(self) -> dict[str, set[str]]:
        """Markers each cloud endpoint has received so far (its own recording)."""
        out = {CLOUD_EU: set(self.tap.seen), CLOUD_US: set()}
        try:
            rows = httpx.get(f"{self.standin}/_received", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            rows = []  # the stand-in restarted (its recording too): the harness keeps a copy
        pat = re.compile(MARKER_RE.decode())
        for row in rows:
            for text in row.get("texts", []):
                out[CLOUD_US].update(pat.findall(text))
        self._us_seen = getattr(self, "_us_seen", set()) | out[CLOUD_US]
        out[CLOUD_US] = set(self._us_seen)
        return out

    def standin_control(self, **settings: Any) -> None:
        httpx.post(f"{self.standin}/_control", json=settings, timeout=5).raise_for_status()
