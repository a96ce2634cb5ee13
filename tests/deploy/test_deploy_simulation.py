"""The HPA simulator: the controller's rules one at a time, then whole-day properties."""

from __future__ import annotations

import dataclasses
import math

import pytest

from edgecloud.deploy.errors import CapacityError
from edgecloud.deploy.simulation import (
    DEFAULT_CAPACITY,
    Direction,
    HpaController,
    HpaParams,
    Policy,
    ReplicaCapacity,
    capacity_from_bench,
    diurnal_burst_trace,
    fixed_fleet_size,
    simulate,
)
from edgecloud.deploy.values import Values, parse_values

FREE_UP = Direction(0, (Policy("Percent", 1000, 15),))
FREE_DOWN = Direction(0, (Policy("Percent", 100, 15),))


def _params(**kw: object) -> HpaParams:
    base = HpaParams(min_replicas=1, max_replicas=50, target=2.0,
                     scale_up=FREE_UP, scale_down=FREE_DOWN)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_desired_is_ceil_of_metric_over_target() -> None:
    ctl = HpaController(_params())
    assert ctl.step(15, current=4, total_inflight=8 * 2.6) == math.ceil(8 * 2.6 / 2)


def _replay(params: HpaParams, steps: list[tuple[float, int, float]]) -> list[int]:
    """The counts a fresh controller recommends at each (time, current count, total in-flight)."""
    ctl = HpaController(params)
    return [ctl.step(t, current=current, total_inflight=load) for t, current, load in steps]


def test_within_tolerance_nothing_changes() -> None:
    # ratio 1.09 and 0.91: inside the 0.1 tolerance; 1.15 is not.
    steps = [(15, 10, 21.8), (30, 10, 18.2), (45, 10, 23.0)]
    assert _replay(_params(), steps) == [10, 10, 12]


def test_min_and_max_bound_the_count() -> None:
    steps = [(15, 4, 100), (30, 6, 0)]
    assert _replay(_params(min_replicas=3, max_replicas=6), steps) == [6, 3]


def test_scale_down_waits_for_its_stabilisation_window() -> None:
    down = Direction(120, (Policy("Percent", 100, 15),))
    # Load drops at 30 s: the window holds the recommendation of 8 until 120 s after it.
    steps = [(15, 8, 16), (30, 8, 2), (120, 8, 2), (140, 8, 2)]
    assert _replay(_params(scale_down=down), steps) == [8, 8, 8, 1]


def test_scale_up_rate_policies_limit_each_period() -> None:
    up = Direction(0, (Policy("Pods", 2, 60), Policy("Percent", 50, 60)), select="Max")
    # From 4: Pods allows 6, Percent allows 6 -> 6. Same period: both limits are measured from
    # the period start (4). After the period, from 6: Pods 8, Percent 9 -> Max picks 9.
    steps = [(15, 4, 40), (30, 6, 40), (90, 6, 40)]
    assert _replay(_params(scale_up=up), steps) == [6, 6, 9]
    min_up = dataclasses.replace(up, select="Min")
    assert _replay(_params(scale_up=min_up), [(15, 6, 40)]) == [8]


def test_scale_down_rate_policy() -> None:
    down = Direction(0, (Policy("Percent", 25, 60),))
    steps = [(15, 8, 0), (30, 6, 0), (90, 6, 0)]
    assert _replay(_params(scale_down=down), steps) == [6, 6, 4]


def test_new_pods_take_traffic_only_after_their_start_delay() -> None:
    cap = ReplicaCapacity(requests_per_s=1.0, concurrency=2, base_ttft_s=0.0, start_s=60)
    trace = [1.0] * 100 + [3.0] * 400  # a step from 1 to 3 req/s
    r = simulate(trace, _params(), cap, ttft_slo_s=1.0, timeline_every_s=1)
    spec_up = next(t for t, _, spec, _ in r.timeline if spec >= 3)
    ready_up = next(t for t, _, _, ready in r.timeline if ready >= 3)
    assert ready_up - spec_up == 60
    assert r.slo_violations > 0
    assert r.violations_during_scale_up == r.slo_violations
    # Once enough pods are ready the queue drains and the violations stop.
    assert r.max_wait_s < 400


def test_a_fixed_fleet_for_the_peak_never_violates_and_costs_more() -> None:
    trace = diurnal_burst_trace(duration_s=6 * 3600, bursts=((3600, 300, 2.0),))
    n = fixed_fleet_size(trace, DEFAULT_CAPACITY)
    fixed = simulate(trace, HpaParams.fixed(n), DEFAULT_CAPACITY, 1.0)
    assert fixed.slo_violations == 0
    assert fixed.replica_hours == pytest.approx(n * 6)
    auto = simulate(trace, HpaParams.from_values(Values()), DEFAULT_CAPACITY, 1.0)
    assert auto.replica_hours < fixed.replica_hours
    assert auto.peak_replicas <= Values().node.autoscaling.max_replicas


def test_a_max_too_low_is_told_apart_from_scale_up_lag() -> None:
    trace = [10.0] * 600
    cap = ReplicaCapacity(requests_per_s=1.0, concurrency=1, base_ttft_s=0.0, start_s=10)
    r = simulate(trace, _params(min_replicas=2, max_replicas=4), cap, 1.0)
    assert r.slo_violations > r.violations_during_scale_up > 0


def test_params_come_from_the_rendered_values() -> None:
    v = parse_values("node: {autoscaling: {min_replicas: 3, target_inflight_per_pod: 2.5,"
                     " scale_down: {stabilization_window_s: 600}}}")
    p = HpaParams.from_values(v)
    assert (p.min_replicas, p.target, p.scale_down.window_s) == (3, 2.5, 600)
    assert p.scale_up.policies == (Policy("Pods", 4, 15), Policy("Percent", 100, 15))


def _level(level: float, rps: float, ttft_p95_ms: float, ok: int = 10) -> dict[str, object]:
    pct = {"p50": ttft_p95_ms / 2, "p95": ttft_p95_ms, "mean": ttft_p95_ms / 2, "count": 10}
    return {"level": level, "requests": 10, "ok": ok, "duration_s": 10, "requests_per_s": rps,
            "output_tokens_per_s": rps * 64, "e2e_ms": {**pct, "mean": 2000.0},
            "ttft_ms": pct, "tpot_ms": pct, "itl_ms": pct}


def test_capacity_from_bench_takes_the_best_level_within_the_slo() -> None:
    doc = {"endpoint": "http://n/v1", "model": "m", "scenario": "concurrency", "workload": "w",
           "levels": [_level(1, 0.8, 90), _level(4, 1.9, 300), _level(8, 2.2, 1800),
                      _level(16, 2.5, 400, ok=7)],
           "cold_start": {"command": "serve", "runs": [],
                          "summary": {"ready_s": {"p50": 20.0, "count": 3}}}}
    cap = capacity_from_bench(doc, ttft_slo_s=1.0)
    assert (cap.requests_per_s, cap.concurrency) == (1.9, 4)
    assert cap.start_s == 35.0
    with pytest.raises(CapacityError, match="no load level"):
        capacity_from_bench(doc, ttft_slo_s=0.05)
