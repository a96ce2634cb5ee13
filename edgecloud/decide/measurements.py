"""Per-tier performance at the SLO, from bench results (measured) or the price file (assumed).

Pure: takes validated `BenchResults` and returns `TierPerformance`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from edgecloud.bench.results import BenchResults, LevelSummary, Percentiles
from edgecloud.decide.errors import BenchMismatch
from edgecloud.decide.inputs import SLO, Assumed, Tokens

Tier = Literal["edge", "cloud"]
MAX_ERROR_SHARE = 0.01  # a level with more failed requests than this does not count


class LevelPoint(BaseModel):
    """One bench level as decide sees it, for the workload's request size."""

    level: float
    ttft_ms: float | None
    e2e_ms: float | None
    capacity_rps: float
    meets_slo: bool


class ImageCost(BaseModel):
    """What a screenshot request costs one box, from an image bench (phone-agent)."""

    images_per_request: float
    # The server's own engine time per image (encode + prefill of its embeddings), at the
    # lowest level; None when the server reports none (then only first_token_ms says it).
    image_ms: float | None
    first_token_ms: float | None  # client-seen TTFT p50 at the lowest level: the whole prompt


class TierPerformance(BaseModel):
    """What one box (edge) or replica (cloud) delivers within the SLO."""

    tier: Tier
    source: str  # "measured (FILE)" or "assumed (prices)"
    measured: bool
    # Requests/s one unit serves within the SLO; None = unlimited (a hosted per-token API).
    capacity_rps: float | None
    ttft_ms: float | None  # at the operating level, at the SLO percentile
    e2e_ms: float | None
    meets_slo: bool
    operating_level: float | None = None
    scenario: str | None = None
    joules_per_request: float | None = None
    endpoint: str | None = None
    model: str | None = None
    points: list[LevelPoint] = []
    images: ImageCost | None = None  # the bench's requests carried images


def _pct(p: Percentiles, name: str) -> float | None:
    value = getattr(p, name)
    return float(value) if value is not None else None


def level_point(
    lv: LevelSummary, tokens: Tokens, slo: SLO, *, closed_loop_images: bool = False
) -> LevelPoint:
    """Latency and capacity of one level, scaled to the workload's output length.

    e2e = TTFT + TPOT x (output tokens - 1) when TPOT was measured (the bench may have used
    another output length); capacity = output tokens/s / output tokens per request. Image
    requests cost mostly their prompt (encode + prefill), not their output: for a closed-loop
    image bench, capacity = concurrency / mean(TTFT + TPOT x (output tokens - 1)) (Little's law).
    """
    ttft = _pct(lv.ttft_ms, slo.percentile)
    tpot = _pct(lv.tpot_ms, slo.percentile)
    if ttft is not None and tpot is not None:
        e2e: float | None = ttft + tpot * max(tokens.output_per_request - 1, 0)
    else:
        e2e = _pct(lv.e2e_ms, slo.percentile)
    mean_ttft, mean_tpot = lv.ttft_ms.mean, lv.tpot_ms.mean
    if closed_loop_images and mean_ttft is not None:
        mean_e2e = mean_ttft + (mean_tpot or 0.0) * max(tokens.output_per_request - 1, 0)
        cap = lv.level * 1000.0 / mean_e2e if mean_e2e > 0 else lv.requests_per_s
    elif lv.output_tokens_per_s > 0:
        cap = lv.output_tokens_per_s / tokens.output_per_request
    else:
        cap = lv.requests_per_s
    errors = (lv.requests - lv.ok) / lv.requests if lv.requests else 1.0
    meets = (
        (ttft is None or ttft <= slo.ttft_ms)
        and (e2e is None or e2e <= slo.e2e_ms)
        and (ttft is not None or e2e is not None)
        and errors <= MAX_ERROR_SHARE
    )
    return LevelPoint(level=lv.level, ttft_ms=ttft, e2e_ms=e2e, capacity_rps=cap, meets_slo=meets)


def from_bench(
    tier: Tier, bench: BenchResults, tokens: Tokens, slo: SLO, file: str
) -> TierPerformance:
    """The operating point: the level with the most capacity within the SLO, not past the knee."""
    if not bench.levels:
        raise BenchMismatch("has no load levels to size from", file=file, field="levels")
    closed = bench.images is not None and bench.scenario in ("single", "concurrency")
    ordered = sorted(bench.levels, key=lambda x: x.level)
    points = [level_point(lv, tokens, slo, closed_loop_images=closed) for lv in ordered]
    knee = bench.knee.level if bench.knee is not None and bench.knee.reason != "none" else None
    usable = [p for p in points if p.meets_slo and (knee is None or p.level <= knee)]
    chosen = max(usable, key=lambda p: p.capacity_rps) if usable else points[0]
    joules = None
    if bench.energy is not None and bench.energy.measured and bench.energy.joules_per_request:
        joules = bench.energy.joules_per_request
    return TierPerformance(
        tier=tier,
        source=f"measured ({file})" if bench.complete else f"measured, partial run ({file})",
        measured=True,
        capacity_rps=chosen.capacity_rps,
        ttft_ms=chosen.ttft_ms,
        e2e_ms=chosen.e2e_ms,
        meets_slo=bool(usable),
        operating_level=chosen.level,
        scenario=bench.scenario,
        joules_per_request=joules,
        endpoint=bench.endpoint,
        model=bench.model,
        points=points,
        images=image_cost(bench),
    )


def image_cost(bench: BenchResults) -> ImageCost | None:
    """Per-request image cost at the lowest level (no queueing), for an image bench."""
    if bench.images is None or not bench.levels:
        return None
    ordered = sorted(bench.levels, key=lambda x: x.level)
    reported = [lv.image_ms for lv in ordered if lv.image_ms is not None]
    return ImageCost(
        images_per_request=bench.images.per_request,
        image_ms=reported[0] if reported else None,
        first_token_ms=_pct(ordered[0].ttft_ms, "p50"),
    )


def from_assumed(tier: Tier, assumed: Assumed, slo: SLO) -> TierPerformance:
    """Performance stated in the price file, for a tier that was not benchmarked."""
    return TierPerformance(
        tier=tier,
        source="assumed (prices file)",
        measured=False,
        capacity_rps=assumed.capacity_rps,
        ttft_ms=assumed.ttft_ms,
        e2e_ms=assumed.e2e_ms,
        meets_slo=assumed.ttft_ms <= slo.ttft_ms and assumed.e2e_ms <= slo.e2e_ms,
    )


def tier_of(bench: BenchResults) -> Tier | None:
    """The tier a bench file names in its label or machine description, if any."""
    hints = [bench.label.lower(), str(bench.machine.get("tier", "")).lower()]
    for hint in hints:
        for tier in ("edge", "cloud"):
            if tier in hint:
                return "edge" if tier == "edge" else "cloud"
    return None


def check_comparable(benches: dict[str, BenchResults]) -> None:
    """Refuse bench files of different models or schema versions (file name -> results)."""
    versions = {f: b.schema_version for f, b in benches.items()}
    if len(set(versions.values())) > 1:
        desc = ", ".join(f"{f}: v{v}" for f, v in versions.items())
        raise BenchMismatch(
            f"bench files use different schema versions ({desc})", field="schema_version"
        )
    models = {f: b.model for f, b in benches.items()}
    if len(set(models.values())) > 1:
        desc = ", ".join(f"{f}: {m!r}" for f, m in models.items())
        raise BenchMismatch(
            f"bench files measured different models ({desc}); compare tiers on the same model",
            field="model",
        )
