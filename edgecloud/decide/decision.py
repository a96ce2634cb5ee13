"""Evaluate the three options against the rules and choose one, with ranked reasons.

Pure: `evaluate_options` runs the checks on each option's cost and sizing, `choose` picks the
cheapest option that passes every check, `explain` ranks the reasons.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, computed_field

from edgecloud.decide.inputs import Prices, Workload
from edgecloud.decide.measurements import TierPerformance
from edgecloud.decide.tco import OPTIONS, Option, OptionCost, bound_share, option_cost

CheckName = Literal["compliance", "slo", "availability", "capability"]
CHECK_ORDER: tuple[CheckName, ...] = ("compliance", "slo", "availability", "capability")
TIE_SHARE = 0.001  # options this close in TCO are a tie: the one with fewer tiers wins
LABEL = {"edge": "edge-only", "cloud": "cloud-only", "hybrid": "hybrid"}


class DecisionInputs(BaseModel):
    """Everything a decision depends on."""

    workload: Workload
    prices: Prices
    edge: TierPerformance
    cloud: TierPerformance


class Check(BaseModel):
    name: CheckName
    passed: bool
    detail: str


class OptionResult(BaseModel):
    option: Option
    cost: OptionCost
    checks: list[Check]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def feasible(self) -> bool:
        return all(c.passed for c in self.checks)

    def check(self, name: CheckName) -> Check:
        return next(c for c in self.checks if c.name == name)


class Reason(BaseModel):
    rank: int
    kind: str  # compliance | slo | availability | capability | cost | volume | duration | reach
    favours: Option | None
    text: str


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%" if x >= 0.01 or x == 0 else f"{x * 100:.2g}%"


def _money(x: float, currency: str) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f}M {currency}"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.0f}k {currency}"
    return f"{x:,.0f} {currency}"


def _compliance(option: Option, w: Workload, p: Prices) -> Check:
    c = w.compliance
    problems = []
    bound = c.edge_bound_personal_share()
    if option == "cloud" and bound > 0:
        problems.append(
            f"{_pct(bound)} of requests carry personal data and "
            "strict compliance keeps them on the edge"
        )
    for rule in c.residency:
        if rule.share <= 0:
            continue
        edge_ok, cloud_ok = p.edge.region in rule.allowed, p.cloud.region in rule.allowed
        ok = {"edge": edge_ok, "cloud": cloud_ok, "hybrid": edge_ok or cloud_ok}[option]
        if not ok:
            where = {
                "edge": p.edge.region,
                "cloud": p.cloud.region,
                "hybrid": f"{p.edge.region} or {p.cloud.region}",
            }[option]
            problems.append(
                f"{_pct(rule.share)} of requests are tagged {rule.region!r} and may "
                f"only run in {rule.allowed}, not in {where}"
            )
    if problems:
        return Check(name="compliance", passed=False, detail="; ".join(problems))
    return Check(name="compliance", passed=True, detail="personal data and residency rules met")


def _slo(
    option: Option, w: Workload, edge: TierPerformance, cloud: TierPerformance, cost: OptionCost
) -> Check:
    used = []
    if option != "cloud":
        used.append(edge)
    if option == "cloud" or any(y.cloud_share > 0 for y in cost.years):
        used.append(cloud)
    slo = w.slo
    failing = [t for t in used if not t.meets_slo]
    parts = [
        f"{t.tier} {slo.percentile} TTFT {t.ttft_ms or 0:.0f} ms, e2e {t.e2e_ms or 0:.0f} ms"
        for t in used
    ]
    target = f"(SLO: TTFT {slo.ttft_ms:.0f} ms, e2e {slo.e2e_ms:.0f} ms)"
    if failing:
        names = ", ".join(t.tier for t in failing)
        return Check(
            name="slo",
            passed=False,
            detail=f"{names} misses the SLO at any load: {'; '.join(parts)} {target}",
        )
    return Check(name="slo", passed=True, detail=f"{'; '.join(parts)} {target}")


def _availability(option: Option, w: Workload, p: Prices, cost: OptionCost) -> Check:
    target = w.availability_target
    edge_a = min((y.edge_availability for y in cost.years), default=1.0)
    cloud_a = p.cloud.availability
    if option == "edge":
        reached = edge_a
    elif option == "cloud":
        reached = cloud_a
    elif any(y.boxes for y in cost.years):
        # Bound requests have no fallback (fail closed); public ones fall back to the other tier.
        reached = edge_a
    else:
        reached = cloud_a
    detail = f"{reached * 100:.3f}% reached, {target * 100:.3f}% targeted"
    return Check(name="availability", passed=reached >= target - 1e-12, detail=detail)


def edge_reads_images(p: Prices, edge: TierPerformance) -> bool:
    """The edge is a vision node: its prices say so, or its bench file measured images."""
    return "vision" in p.edge.capabilities or edge.images is not None


def _capability(option: Option, w: Workload, p: Prices, edge: TierPerformance) -> Check:
    if w.images is not None and w.images.share > 0 and not edge_reads_images(p, edge):
        if option == "edge":
            return Check(
                name="capability",
                passed=False,
                detail=f"{_pct(w.images.share)} of requests carry images and the edge reads "
                "none: give a phone-agent bench of a vision edge or edge.capabilities: vision",
            )
        if option == "hybrid":
            return Check(
                name="capability",
                passed=True,
                detail=f"{_pct(w.images.share)} of requests carry images: the edge reads none, "
                "so they go to the cloud (private ones are refused under images: edge_only)",
            )
    large = w.tokens.large_context_share
    if option == "edge" and large > 0:
        return Check(
            name="capability",
            passed=False,
            detail=f"{_pct(large)} of requests need a larger context than the edge serves",
        )
    if option == "hybrid" and large > 0:
        stuck = bound_share(w, p) * large
        if stuck > 0:
            return Check(
                name="capability",
                passed=True,
                detail=f"{_pct(stuck)} of requests are large and bound to the edge: "
                "served there with a truncated context",
            )
    return Check(name="capability", passed=True, detail="every request can be served")


def evaluate_options(inputs: DecisionInputs) -> dict[Option, OptionResult]:
    """Cost and checks of edge-only, cloud-only and hybrid."""
    w, p, edge, cloud = inputs.workload, inputs.prices, inputs.edge, inputs.cloud
    out: dict[Option, OptionResult] = {}
    for option in OPTIONS:
        cost = option_cost(option, w, p, edge, cloud)
        checks = [
            _compliance(option, w, p),
            _slo(option, w, edge, cloud, cost),
            _availability(option, w, p, cost),
            _capability(option, w, p, edge),
        ]
        out[option] = OptionResult(option=option, cost=cost, checks=checks)
    return out


def _tiers(option: Option) -> int:
    return 2 if option == "hybrid" else 1


def choose(options: dict[Option, OptionResult]) -> Option | None:
    """The cheapest option passing every check; else the cheapest compliant one; else None.

    Options within TIE_SHARE of each other in TCO count as equal; the simpler one wins.
    """
    pool = [r for r in options.values() if r.feasible]
    if not pool:
        pool = [r for r in options.values() if r.check("compliance").passed]
        if not pool:
            return None
        fewest = min(sum(not c.passed for c in r.checks) for r in pool)
        pool = [r for r in pool if sum(not c.passed for c in r.checks) == fewest]
    best = min(r.cost.tco for r in pool)
    near = [r for r in pool if r.cost.tco <= best * (1 + TIE_SHARE) + 1e-9]
    return min(near, key=lambda r: (_tiers(r.option), r.cost.tco)).option


def explain(
    inputs: DecisionInputs,
    options: dict[Option, OptionResult],
    chosen: Option | None,
    break_even_rpd: float | None = None,
) -> list[Reason]:
    """Reasons behind the choice, most decisive first: rules, then cost, then the drivers."""
    w, p = inputs.workload, inputs.prices
    cur = p.currency
    found: list[tuple[int, str, Option | None, str]] = []
    for r in options.values():
        for i, name in enumerate(CHECK_ORDER):
            check = r.check(name)
            if not check.passed:
                found.append((i, name, None, f"{LABEL[r.option]} fails {name}: {check.detail}"))
    if chosen is not None:
        mine = options[chosen].cost.tco
        years = w.months() / 12
        span = f"{years:g} years" if w.months() % 12 == 0 else f"{w.months()} months"
        for other in sorted(options.values(), key=lambda r: r.cost.tco):
            if other.option == chosen:
                continue
            gap = other.cost.tco - mine
            word = "less" if gap >= 0 else "more"
            share = abs(gap) / other.cost.tco if other.cost.tco else 0.0
            found.append(
                (
                    10,
                    "cost",
                    chosen if gap >= 0 else other.option,
                    f"{LABEL[chosen]} costs {_money(mine, cur)} over {span}, "
                    f"{_money(abs(gap), cur)} ({_pct(share)}) {word} than "
                    f"{LABEL[other.option]} ({_money(other.cost.tco, cur)})",
                )
            )
    if break_even_rpd is not None:
        ratio = w.requests_per_day / break_even_rpd
        side: Option = "edge" if ratio >= 1 else "cloud"
        found.append(
            (
                20,
                "volume",
                side,
                f"{w.requests_per_day:,.0f} requests/day is {ratio:.2g}x the break-even "
                f"volume ({break_even_rpd:,.0f}/day) above which edge-only costs less "
                "than cloud-only",
            )
        )
    life_m = p.edge.box_life_years * 12
    if w.months() < life_m:
        found.append(
            (
                21,
                "duration",
                "cloud",
                f"the workload runs {w.months()} months, less than the "
                f"{life_m:.0f}-month life of an edge box: hardware is paid for "
                "but not used up",
            )
        )
    if w.is_global():
        regions = [r for r, s in w.users.regions.items() if s > 0]
        found.append(
            (
                22,
                "reach",
                "cloud",
                f"users are in {len(regions)} regions ({', '.join(regions)}): the edge "
                "needs a site in each, the cloud serves them from one place",
            )
        )
    b = bound_share(w, p)
    if b > 0:
        found.append(
            (
                23,
                "compliance",
                "edge",
                f"{_pct(b)} of requests must stay on the edge (personal data or residency)",
            )
        )
    found.sort(key=lambda t: t[0])
    return [
        Reason(rank=i + 1, kind=kind, favours=fav, text=text)
        for i, (_, kind, fav, text) in enumerate(found)
    ]
