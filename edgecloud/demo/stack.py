"""The processes of the demo: an edge node, a "cloud" node behind an emulated WAN, a gateway."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecloud.demo.wan import LinkProfile, MarkerTap, WanLink
from edgecloud.gateway.config import DEFAULT_DETECT, GatewayConfig, config_yaml
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port


@dataclass
class StackOptions:
    out_dir: Path
    link: LinkProfile
    edge_parallel: int = 2
    cloud_parallel: int = 4
    threads_per_node: int = 1  # two nodes share this machine's cores
    gateway_port: int = 0
    edge_mmproj: Path | None = None  # the edge node's vision projector: it reads screenshots


def gateway_config(
    edge_url: str, cloud_url: str, edge_parallel: int, edge_vision: bool = True
) -> GatewayConfig:
    """The policy the demo runs: personal data and screenshots stay on the edge (an e-mail
    address may leave as a surrogate when the edge is down), EU data in EU
    regions, CN data on the device, overflow to the cloud."""
    return GatewayConfig.model_validate(
        {
            "endpoints": [
                {
                    "name": "edge-local",
                    "tier": "edge",
                    "url": edge_url,
                    "region": "device",
                    "capabilities": ["text", "vision"] if edge_vision else ["text"],
                    "max_concurrency": edge_parallel,
                    "price": {"input_per_mtok": 0.0, "output_per_mtok": 0.0},
                },
                {
                    "name": "cloud-eu",
                    "tier": "cloud",
                    "url": cloud_url,
                    "region": "eu-central-1",
                    "capabilities": ["text"],
                    "max_concurrency": 8,
                    "price": {"input_per_mtok": 0.5, "output_per_mtok": 1.5},
                },
            ],
            "policy": {
                "residency": {"eu": ["eu-central-1", "device"], "cn": ["device"]},
                "privacy": {
                    "detect": list(DEFAULT_DETECT),
                    "action": "edge_only",
                    "images": "edge_only",
                    "pseudonymize": ["email"],
                },
                "offload": {"edge_queue_above": 1},
            },
            "limits": {"health_interval_s": 0.5, "breaker_failures": 2, "breaker_open_s": 2.0},
        }
    )


class DemoStack:
    """Starts and stops everything the demo runs; `stop()` leaves no child behind."""

    def __init__(self, opts: StackOptions, markers: list[str]) -> None:
        self.opts = opts
        self.tap = MarkerTap(markers)
        self.edge_port = free_port()
        self.cloud_port = free_port()
        self.edge: ManagedProcess | None = None
        self.cloud: ManagedProcess | None = None
        self.gateway: ManagedProcess | None = None
        self.link: WanLink | None = None
        self.gateway_url = ""
        self.pids: list[int] = []

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def cloud_url(self) -> str:
        assert self.link is not None
        return f"http://127.0.0.1:{self.link.port}"

    def _node(
        self, name: str, port: int, parallel: int, mmproj: Path | None = None
    ) -> ManagedProcess:
        o = self.opts
        vision = ["--mmproj", str(mmproj)] if mmproj is not None else []
        proc = ManagedProcess(
            edgecloud_command(
                "serve",
                "--port",
                str(port),
                "--parallel",
                str(parallel),
                "--ctx",
                "2048",
                "--threads",
                str(o.threads_per_node),
                "--max-queue",
                "8",
                "--alias",
                "autoglm-phone-9b",
                *vision,
            ),
            f"http://127.0.0.1:{port}/readyz",
            log_path=str(o.out_dir / f"{name}.log"),
            name=name,
        ).start()
        self.pids.append(proc.pid)
        return proc

    def start_edge(self) -> None:
        """(Re)start the edge node on its port and wait until it is ready."""
        if self.edge is not None:
            self.edge.stop(timeout_s=5)
        self.edge = self._node(
            "edge-node", self.edge_port, self.opts.edge_parallel, self.opts.edge_mmproj
        )
        self.edge.wait_ready(180)

    def start(self) -> None:
        o = self.opts
        self.edge = self._node("edge-node", self.edge_port, o.edge_parallel, o.edge_mmproj)
        self.cloud = self._node("cloud-node", self.cloud_port, o.cloud_parallel)
        self.link = WanLink("127.0.0.1", self.cloud_port, o.link, tap=self.tap)
        self.link.start()
        self.edge.wait_ready(180)
        self.cloud.wait_ready(180)
        cfg_path = o.out_dir / "gateway.yaml"
        cfg = gateway_config(
            f"{self.edge_url}/v1",
            f"{self.cloud_url}/v1",
            o.edge_parallel,
            edge_vision=o.edge_mmproj is not None,
        )
        cfg_path.write_text(
            "# Written by `edgecloud demo`: the cloud endpoint sits behind an emulated WAN link.\n"
            + config_yaml(cfg)
        )
        port = o.gateway_port or free_port()
        self.gateway_url = f"http://127.0.0.1:{port}"
        self.gateway = ManagedProcess(
            edgecloud_command("gateway", "--config", str(cfg_path), "--port", str(port)),
            f"{self.gateway_url}/readyz",
            log_path=str(o.out_dir / "gateway.log"),
            name="gateway",
        ).start()
        self.pids.append(self.gateway.pid)
        self.gateway.wait_ready(60)

    def stop(self) -> None:
        for proc in (self.gateway, self.edge, self.cloud):
            if proc is not None:
                proc.stop(timeout_s=10)
        if self.link is not None:
            self.link.stop()
