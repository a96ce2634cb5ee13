"""A pure simulation of the Kubernetes HPA algorithm driving the cloud model nodes.

It replays a request-rate trace second by second through a fluid queue model (each ready
replica serves `requests_per_s`; the rest waits) and, every sync period, through the HPA
controller as kube-controller-manager implements it: desired = ceil(current * metric/target)
with a tolerance, stabilisation windows (min of recent recommendations for scale-up, max for
scale-down), rate-limiting policies per period, min/max bounds, and a pod start delay before a
new replica takes traffic. With KEDA's Prometheus scaler (metric type AverageValue) the HPA
computes the same thing from the total in-flight count, so one simulator covers both modes.

No I/O: the benchmark script reads files and prints; tests call this directly.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from edgecloud.bench.results import BenchResults
from edgecloud.deploy.errors import CapacityError
from edgecloud.deploy.values import ScalePolicy, Values


@dataclass(frozen=True)
class ReplicaCapacity:
    """What one model-node replica sustains within the TTFT SLO."""

    requests_per_s: float
    concurrency: float  # in-flight requests per replica at that rate
    base_ttft_s: float = 0.1  # TTFT with no queueing
    start_s: float = 45.0  # schedule + pull + load + warm-up until /readyz
    source: str = "default"

    @property
    def service_s(self) -> float:
        """Mean time a request holds a slot (Little's law)."""
        return self.concurrency / self.requests_per_s


# A 2-core CPU replica with 4 slots (llama.cpp continuous batching, 64 output tokens per
# request): about 122 output tokens/s at concurrency 4, so ~1.9 requests/s, TTFT ~0.09 s.
DEFAULT_CAPACITY = ReplicaCapacity(requests_per_s=1.9, concurrency=4, base_ttft_s=0.09,
                                   start_s=45.0, source="default (2-core CPU, 4 slots)")


@dataclass(frozen=True)
class Policy:
    kind: Literal["Pods", "Percent"]
    value: int
    period_s: int


@dataclass(frozen=True)
class Direction:
    """One side of the HPA `behavior`."""

    window_s: int
    policies: tuple[Policy, ...]
    select: Literal["Max", "Min"] = "Max"

    @classmethod
    def from_values(cls, p: ScalePolicy) -> Direction:
        pol: list[Policy] = []
        if p.pods_per_period is not None:
            pol.append(Policy("Pods", p.pods_per_period, p.period_s))
        if p.percent_per_period is not None:
            pol.append(Policy("Percent", p.percent_per_period, p.period_s))
        return cls(p.stabilization_window_s, tuple(pol), p.select_policy)


@dataclass(frozen=True)
class HpaParams:
    min_replicas: int
    max_replicas: int
    target: float  # in-flight requests per pod
    scale_up: Direction
    scale_down: Direction
    tolerance: float = 0.1  # kube-controller-manager's default
    sync_period_s: int = 15  # kube-controller-manager's default
    metric_lag_s: int = 15  # scrape interval: the controller sees the metric this late

    @classmethod
    def from_values(cls, values: Values) -> HpaParams:
        a = values.node.autoscaling
        return cls(
            min_replicas=a.min_replicas,
            max_replicas=a.max_replicas,
            target=a.target_inflight_per_pod,
            scale_up=Direction.from_values(a.scale_up),
            scale_down=Direction.from_values(a.scale_down),
            metric_lag_s=values.observability.scrape_interval_s,
        )

    @classmethod
    def fixed(cls, replicas: int) -> HpaParams:
        none = Direction(0, (Policy("Pods", 1, 15),))
        return cls(replicas, replicas, 1.0, none, none)


@dataclass
class SimResult:
    duration_s: int
    requests: float
    slo_violations: float  # requests that waited past the TTFT SLO
    # Of those, the ones due to the autoscaler's reaction time (metric lag, sync period,
    # stabilisation, rate limits, pod start, draining the backlog built meanwhile); the rest
    # arrived while max_replicas, all ready, could not carry the load.
    violations_during_scale_up: float
    replica_hours: float
    peak_replicas: int
    max_wait_s: float
    scale_events: int
    timeline: list[tuple[int, float, int, int]] = field(default_factory=list)  # t, rps, spec, ready

    @property
    def violation_share(self) -> float:
        return self.slo_violations / self.requests if self.requests else 0.0


def _scale_up_limit(current: int, events: deque[tuple[int, int]], now: int, d: Direction) -> int:
    limits = []
    for p in d.policies:
        added = sum(n for t, n in events if n > 0 and t > now - p.period_s)
        start = current - added
        limits.append(start + p.value if p.kind == "Pods"
                      else math.ceil(start * (1 + p.value / 100)))
    return max(limits) if d.select == "Max" else min(limits)


def _scale_down_limit(current: int, events: deque[tuple[int, int]], now: int, d: Direction) -> int:
    limits = []
    for p in d.policies:
        removed = -sum(n for t, n in events if n < 0 and t > now - p.period_s)
        start = current + removed
        limits.append(start - p.value if p.kind == "Pods"
                      else int(start * (1 - p.value / 100)))
    # For scale-down the largest change is the lowest count.
    return min(limits) if d.select == "Max" else max(limits)


class HpaController:
    """The replica calculation of the HPA with `behavior` (pure; call `step` every sync)."""

    def __init__(self, params: HpaParams) -> None:
        self.p = params
        self.recommendations: deque[tuple[int, int]] = deque()
        self.events: deque[tuple[int, int]] = deque()

    def step(self, now: int, current: int, total_inflight: float) -> int:
        """The new replica count given the total in-flight requests seen now."""
        p = self.p
        ratio = total_inflight / (p.target * current) if current else math.inf
        if abs(ratio - 1.0) <= p.tolerance:
            raw = current
        else:
            raw = math.ceil(total_inflight / p.target) if math.isfinite(ratio) else p.max_replicas
        # Stabilisation: follow the lowest recent recommendation up, the highest down.
        up, down = raw, raw
        for t, r in self.recommendations:
            if t > now - p.scale_up.window_s:
                up = min(up, r)
            if t > now - p.scale_down.window_s:
                down = max(down, r)
        self.recommendations.append((now, raw))
        horizon = max(p.scale_up.window_s, p.scale_down.window_s)
        while self.recommendations and self.recommendations[0][0] <= now - horizon:
            self.recommendations.popleft()
        desired = current
        if desired < up:
            desired = up
        if desired > down:
            desired = down
        # Rate limits, then bounds.
        if desired > current:
            limit = max(current, _scale_up_limit(current, self.events, now, p.scale_up))
            desired = min(desired, limit, p.max_replicas)
        elif desired < current:
            limit = _scale_down_limit(current, self.events, now, p.scale_down)
            desired = max(desired, limit, p.min_replicas)
        desired = min(max(desired, p.min_replicas), p.max_replicas)
        if desired != current:
            self.events.append((now, desired - current))
        longest = max((q.period_s for d in (p.scale_up, p.scale_down) for q in d.policies),
                      default=0)
        while self.events and self.events[0][0] <= now - longest:
            self.events.popleft()
        return desired


def simulate(trace: list[float], params: HpaParams, cap: ReplicaCapacity,
             ttft_slo_s: float, timeline_every_s: int = 60) -> SimResult:
    """Replay `trace` (requests/s, one value per second) through the HPA and the queue."""
    ctl = HpaController(params)
    spec = params.min_replicas
    ready_at: list[int] = [0] * spec  # second at which each pod becomes ready
    backlog = 0.0
    history: deque[float] = deque(maxlen=max(1, params.metric_lag_s) + 1)
    wait_budget = max(0.0, ttft_slo_s - cap.base_ttft_s)
    res = SimResult(len(trace), 0.0, 0.0, 0.0, 0.0, spec, 0.0, 0)
    replica_s = 0
    for t, rps in enumerate(trace):
        ready = sum(1 for r in ready_at if r <= t)
        rate = ready * cap.requests_per_s
        wait = backlog / rate if rate > 0 else math.inf
        if wait > wait_budget:
            res.slo_violations += rps
            if not (ready == params.max_replicas and rps > rate):
                res.violations_during_scale_up += rps
        res.max_wait_s = max(res.max_wait_s, min(wait, 3600.0))
        res.requests += rps
        backlog = max(0.0, backlog + rps - rate)
        # The autoscaling metric: requests holding a slot plus those queued (Little's law).
        history.append(min(rps, rate) * cap.service_s + backlog)
        replica_s += len(ready_at)
        if t % params.sync_period_s == 0 and t > 0:
            new = ctl.step(t, spec, history[0])
            if new > spec:
                ready_at += [t + round(cap.start_s)] * (new - spec)
            elif new < spec:
                # Remove starting pods first, then the newest ready ones.
                ready_at.sort()
                del ready_at[new:]
            if new != spec:
                res.scale_events += 1
            spec = new
            res.peak_replicas = max(res.peak_replicas, spec)
        if timeline_every_s and t % timeline_every_s == 0:
            res.timeline.append((t, rps, spec, ready))
    res.replica_hours = replica_s / 3600
    return res


def diurnal_burst_trace(duration_s: int = 86_400, base_rps: float = 1.5,
                        peak_rps: float = 9.0, bursts: tuple[tuple[int, int, float], ...] = (
                            (9 * 3600, 600, 2.0), (14 * 3600, 300, 2.5), (20 * 3600, 900, 1.8)),
                        ramp_s: int = 30, noise: float = 0.05, seed: int = 7) -> list[float]:
    """Requests/s per second: a day-long sine (trough 04:00, peak 16:00), bursts that multiply
    the rate by a factor after a `ramp_s` ramp, and seeded per-minute noise."""
    rng = random.Random(seed)
    minute_noise = [1.0 + rng.uniform(-noise, noise) for _ in range(duration_s // 60 + 1)]
    out = []
    for t in range(duration_s):
        phase = 2 * math.pi * ((t - 4 * 3600) % 86_400) / 86_400
        rate = base_rps + (peak_rps - base_rps) * (1 - math.cos(phase)) / 2
        for start, length, factor in bursts:
            if start <= t < start + length:
                rate *= 1 + (factor - 1) * min(1.0, (t - start + 1) / max(1, ramp_s))
        out.append(rate * minute_noise[t // 60])
    return out


def fixed_fleet_size(trace: list[float], cap: ReplicaCapacity) -> int:
    """The smallest fixed fleet that never queues at the trace's peak."""
    return max(1, math.ceil(max(trace) / cap.requests_per_s))


def capacity_from_bench(data: dict[str, object], ttft_slo_s: float) -> ReplicaCapacity:
    """Per-replica capacity from an `edgecloud bench` results document: the load level with
    the most requests/s whose p95 TTFT meets the SLO and whose requests all succeeded."""
    res = BenchResults.model_validate(data)
    best = None
    for lv in res.levels:
        p95 = lv.ttft_ms.p95 if lv.ttft_ms.p95 is not None else lv.e2e_ms.p95
        if p95 is None or p95 / 1000 > ttft_slo_s or lv.ok < lv.requests or lv.requests == 0:
            continue
        if best is None or lv.requests_per_s > best.requests_per_s:
            best = lv
    if best is None or best.requests_per_s <= 0:
        raise CapacityError(
            f"no load level in the results meets p95 TTFT <= {ttft_slo_s} s without errors; "
            "bench at lower concurrency or relax the SLO"
        )
    if res.scenario == "concurrency":
        concurrency = best.level
    else:  # open loop: Little's law from the mean end-to-end time
        concurrency = best.requests_per_s * (best.e2e_ms.mean or 0) / 1000
    start_s = DEFAULT_CAPACITY.start_s
    if res.cold_start and "ready_s" in res.cold_start.summary:
        ready = res.cold_start.summary["ready_s"].p50
        if ready is not None:
            start_s = ready + 15.0  # plus scheduling and image start on a warm node
    return ReplicaCapacity(
        requests_per_s=best.requests_per_s,
        concurrency=max(concurrency, 1e-6),
        base_ttft_s=(best.ttft_ms.p50 or 0) / 1000,
        start_s=start_s,
        source=f"bench results ({res.endpoint}, level {best.level:g})",
    )
