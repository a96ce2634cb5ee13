"""Pure numbers of a bench run: percentiles, per-level summaries, goodput, the knee, energy.

No I/O here: everything takes plain data and returns plain data (or schema models), so it is
tested directly against hand-checked values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from edgecloud.bench.results import Knee, LevelSummary, Percentiles, RequestRecord

# Default knee rule (docs/bench.md, "The knee").
KNEE_MIN_GAIN = 0.10  # throughput must grow by >= 10% of the relative load increase
KNEE_LATENCY_FACTOR = 2.0  # p95 may grow to 2x its value at the lowest level


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation.

    The same definition as numpy's default ("linear", Hyndman-Fan type 7): the rank is
    q/100 * (n - 1) and values between ranks are interpolated.
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    rank = q / 100.0 * (n - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    frac = rank - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def summarize(values: Iterable[float]) -> Percentiles:
    """Mean, p50/p90/p95/p99, min, max and count of a set of values (ms)."""
    data = sorted(values)
    if not data:
        return Percentiles(count=0)
    return Percentiles(
        mean=sum(data) / len(data),
        p50=percentile(data, 50),
        p90=percentile(data, 90),
        p95=percentile(data, 95),
        p99=percentile(data, 99),
        min=data[0],
        max=data[-1],
        count=len(data),
    )


def tpot_ms(record: RequestRecord) -> float | None:
    """Time per output token after the first: (e2e - ttft) / (tokens - 1)."""
    if record.ttft_ms is None or record.e2e_ms is None or record.output_tokens < 2:
        return None
    return (record.e2e_ms - record.ttft_ms) / (record.output_tokens - 1)


def meets_slo(record: RequestRecord, slo: dict[str, float]) -> bool:
    """A successful request within every SLO bound that is set (ttft_ms, e2e_ms)."""
    if not record.ok:
        return False
    ttft = slo.get("ttft_ms")
    if ttft is not None and (record.ttft_ms is None or record.ttft_ms > ttft):
        return False
    e2e = slo.get("e2e_ms")
    return not (e2e is not None and (record.e2e_ms is None or record.e2e_ms > e2e))


def summarize_level(
    level: float,
    records: Sequence[RequestRecord],
    duration_s: float,
    slo: dict[str, float] | None = None,
) -> LevelSummary:
    """Everything one load level measured, from its per-request records."""
    ok = [r for r in records if r.ok]
    errors: dict[str, int] = {}
    for r in records:
        if not r.ok:
            kind = r.error or "error"
            errors[kind] = errors.get(kind, 0) + 1
    duration = max(duration_s, 1e-9)
    out_tokens = sum(r.output_tokens for r in ok)
    itl: list[float] = []
    for r in ok:
        itl.extend(r.itl_ms)
    good_share = good_rate = None
    if slo:
        good = sum(1 for r in records if meets_slo(r, slo))
        good_share = good / len(records) if records else 0.0
        good_rate = good / duration
    return LevelSummary(
        level=level,
        requests=len(records),
        ok=len(ok),
        errors=errors,
        duration_s=duration_s,
        requests_per_s=len(ok) / duration,
        output_tokens_per_s=out_tokens / duration,
        e2e_ms=summarize(r.e2e_ms for r in ok if r.e2e_ms is not None),
        ttft_ms=summarize(r.ttft_ms for r in ok if r.ttft_ms is not None),
        tpot_ms=summarize(t for r in ok if (t := tpot_ms(r)) is not None),
        itl_ms=summarize(itl),
        goodput_share=good_share,
        goodput_per_s=good_rate,
    )


def _throughput(summary: LevelSummary) -> float:
    if summary.output_tokens_per_s > 0:
        return summary.output_tokens_per_s
    return summary.requests_per_s


def find_knee(
    levels: Sequence[LevelSummary],
    *,
    min_gain: float = KNEE_MIN_GAIN,
    latency_factor: float = KNEE_LATENCY_FACTOR,
) -> Knee | None:
    """The highest load level that still pays off (docs/bench.md, "The knee").

    Walking the levels upwards, the knee is the first level L where either
    - the next level's throughput grows by less than `min_gain` times the relative load
      increase ("throughput_plateau": e.g. doubling the load adds < 10% throughput), or
    - the next level's p95 end-to-end latency exceeds `latency_factor` times the p95 at the
      lowest level ("latency_departure": p95 leaves its low-load band).
    Throughput is output tokens/s when the run produced tokens, else requests/s. With no such
    level, the highest level is returned with reason "none" (no knee in the tested range).
    """
    usable = sorted((s for s in levels if s.ok > 0), key=lambda s: s.level)
    if not usable:
        return None
    base_p95 = usable[0].e2e_ms.p95
    for cur, nxt in zip(usable, usable[1:], strict=False):
        x0, x1 = _throughput(cur), _throughput(nxt)
        load_gain = nxt.level / cur.level - 1.0 if cur.level > 0 else 1.0
        if x0 > 0 and (x1 / x0 - 1.0) < min_gain * load_gain:
            return _knee(cur, "throughput_plateau")
        p95 = nxt.e2e_ms.p95
        if base_p95 and p95 is not None and p95 > latency_factor * base_p95:
            return _knee(cur, "latency_departure")
    return _knee(usable[-1], "none")


def _knee(summary: LevelSummary, reason: str) -> Knee:
    return Knee(
        level=summary.level,
        reason=reason,
        requests_per_s=summary.requests_per_s,
        output_tokens_per_s=summary.output_tokens_per_s,
    )


def estimate_joules(cpu_seconds: float, watts_per_busy_core: float) -> float:
    """Energy estimate from CPU time: each fully busy core draws `watts_per_busy_core`."""
    return max(cpu_seconds, 0.0) * watts_per_busy_core


def energy_ratios(
    joules: float | None, requests: int, output_tokens: int
) -> tuple[float | None, float | None]:
    """(joules per request, output tokens per joule); None where undefined."""
    if joules is None or joules <= 0:
        return None, None
    per_request = joules / requests if requests else None
    return per_request, output_tokens / joules


def counter_delta(before: int, after: int, wrap: int) -> int:
    """Difference of a wrapping energy counter (RAPL `energy_uj`, range `wrap`)."""
    return after - before if after >= before else after + wrap - before
