"""Prometheus metrics of the fleet server (prefix `edgecloud_fleet_`) for dashboards and alerts.

Counters move on the request path (one increment each); everything that describes the fleet
(devices per version, rollout stages, gate values) is computed at scrape time from a
`FleetSnapshot`, so series of finished rollouts disappear instead of going stale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgecloud.fleet.rollout import ModelRelease

prometheus_client.disable_created_metrics()

P = "edgecloud_fleet_"
EVENT_KINDS = frozenset({"activated", "refused", "rolled_back", "recovered"})
MAX_REASONS = 64  # distinct refusal reasons kept as labels; the rest count as "other"
_REASON = re.compile(r"[a-z][a-z0-9_]{0,47}")
_PROSE_REASONS = (("needs agent", "agent_too_old"), ("failed its checks", "failed_before"))


def refusal_reason(text: str) -> str:
    """The reason code of an agent's refusal (`metadata_expired: detail` -> `metadata_expired`)."""
    head = text.split(":", 1)[0].strip()
    if _REASON.fullmatch(head):
        return head
    for prefix, code in _PROSE_REASONS:
        if head.startswith(prefix):
            return code
    return "other"


@dataclass(frozen=True)
class FleetSnapshot:
    """What the scrape-time gauges describe, gathered by the server right before a scrape."""

    devices: Mapping[tuple[str, str], int] = field(default_factory=dict)
    releases: Sequence[ModelRelease] = ()
    gates: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "model version" keys
    controller_last_tick: float = 0.0
    pending_writes: int = 0


class _SnapshotCollector(Collector):
    """Yields the gauges of the snapshot set by `FleetMetrics.render`."""

    def __init__(self) -> None:
        self.snapshot = FleetSnapshot()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.snapshot
        devices = GaugeMetricFamily(
            P + "devices",
            "Devices whose latest report says they run this model version.",
            labels=["model", "version"],
        )
        for (model, version), n in sorted(s.devices.items()):
            devices.add_metric([model, version], n)
        yield devices

        percent = GaugeMetricFamily(
            P + "rollout_percent",
            "Current stage (percent of the fleet) of a staged version.",
            labels=["model", "version"],
        )
        stage = GaugeMetricFamily(
            P + "release_stage",
            "Stage of each release (value 1): draft, staged, stable or aborted.",
            labels=["model", "version", "stage"],
        )
        gate = GaugeMetricFamily(
            P + "gate_value",
            "Last gate reading of a staged version by the controller.",
            labels=["model", "version", "gate"],
        )
        for r in s.releases:
            stage.add_metric([r.model, r.version, r.rollout.stage], 1)
            if r.rollout.stage != "staged":
                continue
            percent.add_metric([r.model, r.version], r.rollout.percent)
            seen = s.gates.get(f"{r.model} {r.version}") or {}
            for name, value in sorted((seen.get("values") or {}).items()):
                if value is not None:
                    gate.add_metric([r.model, r.version, name], float(value))
        yield percent
        yield stage
        yield gate

        tick = GaugeMetricFamily(
            P + "controller_last_run_timestamp_seconds",
            "Unix time of the rollout controller's last completed pass (0: none yet).",
        )
        tick.add_metric([], s.controller_last_tick)
        yield tick
        pending = GaugeMetricFamily(
            P + "pending_writes", "Device reports accepted but not yet written to the database."
        )
        pending.add_metric([], s.pending_writes)
        yield pending


class FleetMetrics:
    """All fleet server metrics in their own registry (tests import many servers' modules)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._snapshot = _SnapshotCollector()
        r.register(self._snapshot)
        self.requests = Counter(
            P + "requests", "Requests by route and HTTP status.", ["route", "status"], registry=r
        )
        self.reports = Counter(P + "reports", "Device reports accepted.", registry=r)
        self.events = Counter(
            P + "device_events",
            "Events devices reported: activated, refused, rolled_back, recovered (else other).",
            ["kind"],
            registry=r,
        )
        self.refusals = Counter(
            P + "agent_refusals", "Updates agents refused, by reason.", ["reason"], registry=r
        )
        self.rollout_steps = Counter(
            P + "rollout_steps",
            "Steps the rollout controller took: advance, complete, abort.",
            ["model", "action"],
            registry=r,
        )
        self.aborted = Counter(
            P + "rollouts_aborted", "Rollouts the controller aborted.", ["model"], registry=r
        )
        self.controller_errors = Counter(
            P + "controller_errors", "Rollout controller passes that failed.", registry=r
        )
        self.flush_errors = Counter(
            P + "db_flush_errors", "Batched database writes that failed (retried).", registry=r
        )
        self._request_children: dict[tuple[str, int], Any] = {}
        self._reasons: set[str] = set()

    def request(self, route: str, status: int) -> None:
        """Count one request (the only per-request work: a cached child's increment)."""
        child = self._request_children.get((route, status))
        if child is None:
            child = self._request_children[(route, status)] = self.requests.labels(
                route, str(status)
            )
        child.inc()

    def device_events(self, kinds_and_reasons: Iterable[tuple[str, str]]) -> None:
        """Count the events of one report, refusals by reason (label count bounded)."""
        for kind, reason in kinds_and_reasons:
            self.events.labels(kind if kind in EVENT_KINDS else "other").inc()
            if kind == "refused":
                code = refusal_reason(reason)
                if code not in self._reasons:
                    if len(self._reasons) >= MAX_REASONS:
                        code = "other"
                    self._reasons.add(code)
                self.refusals.labels(code).inc()

    def rollout_step(self, model: str, action: str) -> None:
        self.rollout_steps.labels(model, action).inc()
        if action == "abort":
            self.aborted.labels(model).inc()

    def render(self, snapshot: FleetSnapshot) -> bytes:
        """The text exposition of every metric, with gauges from `snapshot`."""
        for model in {r.model for r in snapshot.releases}:
            self.aborted.labels(model)  # a 0 series, so increase() sees the first abort
        self._snapshot.snapshot = snapshot
        return generate_latest(self.registry)
