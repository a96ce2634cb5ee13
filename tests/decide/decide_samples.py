"""Small valid inputs for the decide tests: bench results built with the schema's own models,
and a workload and prices simple enough to compute by hand."""

from __future__ import annotations

from typing import Any

from edgecloud.bench.results import BenchResults, Energy, Knee, LevelSummary, Percentiles
from edgecloud.decide.decision import DecisionInputs
from edgecloud.decide.inputs import Prices, Workload
from edgecloud.decide.measurements import TierPerformance


def pct(value: float) -> Percentiles:
    return Percentiles(mean=value, p50=value, p90=value, p95=value, p99=value, count=100)


def level(
    c: float, tok_s: float, ttft: float, tpot: float, out_tokens: int = 100, ok_share: float = 1.0
) -> LevelSummary:
    rps = tok_s / out_tokens
    n = 100
    return LevelSummary(
        level=c,
        requests=n,
        ok=round(n * ok_share),
        duration_s=n / rps,
        requests_per_s=rps,
        output_tokens_per_s=tok_s,
        e2e_ms=pct(ttft + tpot * (out_tokens - 1)),
        ttft_ms=pct(ttft),
        tpot_ms=pct(tpot),
        itl_ms=pct(tpot),
    )


def bench(
    label: str = "edge box",
    model: str = "tiny-model",
    knee: float | None = 4,
    levels: list[LevelSummary] | None = None,
    **extra: Any,
) -> BenchResults:
    lv = (
        levels
        if levels is not None
        else [
            level(1, 50, 100, 20),
            level(2, 90, 150, 22),
            level(4, 150, 300, 27),
            level(8, 160, 900, 50),
        ]
    )
    k = (
        Knee(level=knee, reason="throughput_plateau", requests_per_s=1.5, output_tokens_per_s=150)
        if knee is not None
        else None
    )
    return BenchResults(
        label=label,
        endpoint="http://127.0.0.1:9/v1",
        model=model,
        scenario="concurrency",
        workload="test",
        levels=lv,
        knee=k,
        energy=Energy(source="none", measured=False),
        **extra,
    )


def workload(**over: Any) -> Workload:
    """86,400 requests/day = 1 request/s on average, 2 at peak; one site; one year."""
    data: dict[str, Any] = {
        "requests_per_day": 86_400,
        "peak_to_average": 2.0,
        "growth_per_year": 0.0,
        "horizon_years": 1,
        "capacity_headroom": 0.0,
        "availability_target": 0.9,
        "tokens": {"input_per_request": 1000, "output_per_request": 100},
        "slo": {"ttft_ms": 1000, "e2e_ms": 10_000},
    }
    _merge(data, over)
    return Workload.model_validate(data)


def prices(**over: Any) -> Prices:
    data: dict[str, Any] = {
        "currency": "EUR",
        "ops_hourly_rate": 50,
        "edge": {
            "box_price": 1000,
            "box_life_years": 3,
            "idle_watts": 100,
            "busy_watts": 100,
            "power_per_kwh": 0.5,
            "site_cost_per_month": 100,
            "ops_hours_per_site_per_month": 10,
            "box_availability": 1.0,
            "site_availability": 1.0,
        },
        "cloud": {
            "pricing": "per_token",
            "input_per_mtok": 1.0,
            "output_per_mtok": 10.0,
            "fixed_per_month": 100,
            "availability": 0.999,
            "region": "eu-central-1",
        },
    }
    _merge(data, over)
    return Prices.model_validate(data)


def perf(
    tier: str = "edge",
    capacity: float | None = 1.0,
    ttft: float = 200,
    e2e: float = 2000,
    **extra: Any,
) -> TierPerformance:
    return TierPerformance(
        tier=tier,
        source="test",
        measured=False,
        capacity_rps=capacity,
        ttft_ms=ttft,
        e2e_ms=e2e,
        meets_slo=ttft <= 1000 and e2e <= 10_000,
        **extra,
    )


def inputs(
    w: Workload | None = None,
    p: Prices | None = None,
    edge: TierPerformance | None = None,
    cloud: TierPerformance | None = None,
) -> DecisionInputs:
    return DecisionInputs(
        workload=w or workload(),
        prices=p or prices(),
        edge=edge or perf("edge"),
        cloud=cloud or perf("cloud", None),
    )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    """Apply `a__b=value` overrides into nested dicts."""
    for key, value in over.items():
        parts = key.split("__")
        cur = base
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
