"""Invariant checks: leaks seen by the cloud side, stuck states, recovery, resource use."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import psutil

from edgecloud.testing.chaos.stack import ADMIN_TOKEN, ChaosStack
from edgecloud.testing.chaos.traffic import EDGE, FORBIDDEN_AT, Outcome


def leaks(stack: ChaosStack, sent: Iterable[Outcome]) -> list[str]:
    """Markers of requests sent in this window that a cloud endpoint may not have received,
    and did (each as "endpoint:marker")."""
    mine = {o.marker for o in sent}
    out = []
    for endpoint, seen in stack.received_markers().items():
        for m in seen & mine:
            if m.startswith(FORBIDDEN_AT[endpoint]):
                out.append(f"{endpoint}:{m}")
    return sorted(out)


def _gauges(url: str, prefix: str) -> dict[str, float]:
    text = httpx.get(url, timeout=3).text
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def stuck_states(stack: ChaosStack) -> list[str]:
    """What is not back at rest with no traffic: breakers not closed, requests still counted in
    flight at the gateway or a node, slots held, a queue, a node not ready, the agent gone."""
    out: list[str] = []
    try:
        g = _gauges(f"{stack.gateway}/metrics", "edgecloud_gateway_endpoint_")
        for k, v in g.items():
            if "breaker_state" in k and v != 0:
                out.append(f"gateway breaker {k.split('endpoint=')[1].split(',')[0]}={v:g}")
            if "in_flight" in k and v != 0:
                out.append(f"gateway in_flight {k.split('endpoint=')[1].split(',')[0]}={v:g}")
    except httpx.HTTPError as exc:
        out.append(f"gateway metrics: {type(exc).__name__}")
    for name in (EDGE, "cloud-eu"):
        base = f"http://127.0.0.1:{stack.ports[name]}"
        try:
            n = _gauges(f"{base}/metrics", "edgecloud_node_")
            for key in ("edgecloud_node_in_flight_requests", "edgecloud_node_active_slots",
                        "edgecloud_node_queue_depth"):
                if n.get(key, 0) != 0:
                    out.append(f"{name} {key.removeprefix('edgecloud_node_')}={n[key]:g}")
            if httpx.get(f"{base}/readyz", timeout=3).status_code != 200:
                out.append(f"{name} not ready")
        except httpx.HTTPError as exc:
            out.append(f"{name} metrics: {type(exc).__name__}")
    out.extend(unverified_model(stack))
    agent = stack.parts.get("agent")
    if agent is not None and not agent.proc.alive():
        out.append(f"agent exited ({agent.proc.proc.returncode if agent.proc.proc else '?'})")
    for name, part in stack.parts.items():
        if name != "agent" and not part.proc.alive():
            out.append(f"{name} exited")
    return out


def unverified_model(stack: ChaosStack) -> list[str]:
    """The edge node must serve the published model (the sha256 it computed itself)."""
    try:
        r = httpx.get(f"{stack.edge}/admin/model", timeout=5,
                      headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        sha = r.json().get("sha256") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        return [f"edge model: {type(exc).__name__}"]
    if sha != stack.model_sha256:
        return [f"edge serves sha256 {str(sha)[:12]}, published {stack.model_sha256[:12]}"]
    return []


@dataclass
class RssSample:
    peak_mb: float = 0.0
    peak_part: str = ""


class RssMonitor:
    """Samples the resident memory of every part (with its children) until stopped."""

    def __init__(self, stack: ChaosStack, interval_s: float = 0.25) -> None:
        self.stack = stack
        self.interval_s = interval_s
        self.sample = RssSample()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssMonitor:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(2)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name, part in list(self.stack.parts.items()):
                mb = process_rss_mb(part.proc.proc.pid if part.proc.proc else None)
                if mb > self.sample.peak_mb:
                    self.sample = RssSample(mb, name)


def process_rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        p = psutil.Process(pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


def process_fds(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        p = psutil.Process(pid)
        return sum(q.num_fds() for q in [p, *p.children(recursive=True)])
    except psutil.Error:
        return 0
