"""Replay a diurnal-plus-burst trace through the HPA with the rendered autoscaling parameters.

Reports replica-hours, requests that waited past the TTFT SLO (and how many of those fell
while new replicas were starting), and the cost against a fixed fleet sized for the peak.
Per-replica capacity comes from an `edgecloud bench` results file when given, else the
documented default (a 2-core CPU replica with 4 slots).

    python benchmarks/autoscale_sim.py                       # defaults, plus a sweep
    python benchmarks/autoscale_sim.py --values my.yaml --bench results.json

Writes benchmarks/results/autoscale_sim.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from edgecloud.deploy.simulation import (
    DEFAULT_CAPACITY,
    Direction,
    HpaParams,
    Policy,
    ReplicaCapacity,
    SimResult,
    capacity_from_bench,
    diurnal_burst_trace,
    fixed_fleet_size,
    simulate,
)
from edgecloud.deploy.values import load_values
from edgecloud.testing.figures import write_result


def _row(name: str, r: SimResult, fixed: SimResult, price: float) -> dict[str, object]:
    return {
        "variant": name,
        "replica_hours": round(r.replica_hours, 1),
        "cost": round(r.replica_hours * price, 2),
        "cost_vs_fixed": round(r.replica_hours / fixed.replica_hours, 3),
        "peak_replicas": r.peak_replicas,
        "slo_violation_pct": round(100 * r.violation_share, 3),
        "violations_in_scale_up_pct": round(100 * r.violations_during_scale_up / r.requests, 3),
        "max_wait_s": round(r.max_wait_s, 1),
        "scale_events": r.scale_events,
    }


def _variants(base: HpaParams) -> list[tuple[str, HpaParams]]:
    rep = dataclasses.replace
    slow_up = Direction(0, (Policy("Pods", 1, 60),))
    return [
        ("rendered values", base),
        ("target 2 in-flight/pod", rep(base, target=2.0)),
        ("target 4 in-flight/pod (= slots)", rep(base, target=4.0)),
        ("scale-down window 60 s", rep(base, scale_down=rep(base.scale_down, window_s=60))),
        ("scale-down window 600 s", rep(base, scale_down=rep(base.scale_down, window_s=600))),
        ("scale-up 1 pod per 60 s", rep(base, scale_up=slow_up)),
        ("scale-up window 60 s", rep(base, scale_up=rep(base.scale_up, window_s=60))),
        ("min replicas 1", rep(base, min_replicas=1)),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--values", help="values YAML (default: the built-in defaults)")
    ap.add_argument("--bench", help="edgecloud bench results JSON for per-replica capacity")
    ap.add_argument("--base-rps", type=float, default=1.5)
    ap.add_argument("--peak-rps", type=float, default=9.0)
    ap.add_argument("--start-s", type=float, help="pod start delay (default: from bench or 45)")
    ap.add_argument("--price", type=float, default=0.10, help="price of one replica-hour")
    ap.add_argument("--no-sweep", action="store_true", help="only the rendered values")
    args = ap.parse_args(argv)

    values = load_values(args.values)
    slo = values.observability.slo.ttft_p95_s
    cap: ReplicaCapacity = DEFAULT_CAPACITY
    if args.bench:
        cap = capacity_from_bench(json.loads(Path(args.bench).read_text()), slo)
    if args.start_s is not None:
        cap = dataclasses.replace(cap, start_s=args.start_s)
    trace = diurnal_burst_trace(base_rps=args.base_rps, peak_rps=args.peak_rps)
    n_fixed = fixed_fleet_size(trace, cap)
    fixed = simulate(trace, HpaParams.fixed(n_fixed), cap, slo)
    base = HpaParams.from_values(values)
    # The rendered max must allow the peak, else the comparison measures the cap, not the HPA.
    print(f"capacity: {cap.requests_per_s:.2f} req/s per replica at {cap.concurrency:g} "
          f"in flight, start {cap.start_s:.0f} s ({cap.source}); TTFT SLO {slo} s")
    print(f"trace: 24 h, {args.base_rps}..{args.peak_rps} req/s diurnal, bursts to "
          f"{max(trace):.1f} req/s; {fixed.requests:,.0f} requests")
    print(f"fixed fleet for the peak: {n_fixed} replicas, {fixed.replica_hours:.0f} "
          f"replica-hours, {100 * fixed.violation_share:.2f}% over SLO")
    variants = _variants(base)[: 1 if args.no_sweep else None]
    rows = [_row(name, simulate(trace, p, cap, slo), fixed, args.price) for name, p in variants]
    rows.append(_row(f"fixed {n_fixed} replicas", fixed, fixed, args.price))
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    write_result("autoscale_sim", summary={"capacity": dataclasses.asdict(cap),
                                           "fixed_replicas": n_fixed, "rows": rows},
                 samples={"trace_rps_per_second": [round(x, 3) for x in trace[::60]]},
                 params=vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
