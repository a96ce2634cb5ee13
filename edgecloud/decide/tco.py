"""Total cost of ownership of one placement option, month by month.

Pure: takes the workload, the prices and the tiers' performance, returns the cost series.
Every formula is in docs/decide.md ("Costs"); the names below follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, computed_field

from edgecloud.decide.errors import InputError
from edgecloud.decide.inputs import Prices, Workload
from edgecloud.decide.measurements import TierPerformance
from edgecloud.decide.sizing import (
    DAYS_PER_MONTH,
    HOURS_PER_MONTH,
    peak_rps,
    spares_for,
    units_needed,
)

Option = Literal["edge", "cloud", "hybrid"]
OPTIONS: tuple[Option, ...] = ("edge", "cloud", "hybrid")


class YearPlan(BaseModel):
    """What one year of an option looks like."""

    year: int
    requests_per_day: float
    peak_rps: float
    edge_share: float  # share of requests served at the edge
    cloud_share: float
    boxes_by_site: dict[str, int]
    spares_by_site: dict[str, int]
    edge_availability: float  # worst site; 1.0 when no edge
    cloud_replicas: float  # billed on average (gpu_hour); 0 for per-token
    capex: float = 0.0
    opex: float = 0.0

    @property
    def boxes(self) -> int:
        return sum(self.boxes_by_site.values())


class OptionCost(BaseModel):
    """The cost of one option over the months the workload runs."""

    option: Option
    currency: str
    months: int
    monthly_capex: list[float]
    monthly_opex: list[float]
    residual_value: float  # resale credit at the end (already subtracted from tco)
    by_category: dict[str, float]
    years: list[YearPlan]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def capex(self) -> float:
        return sum(self.monthly_capex) - self.residual_value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def opex(self) -> float:
        return sum(self.monthly_opex)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tco(self) -> float:
        return self.capex + self.opex

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_requests(self) -> float:
        return sum(
            y.requests_per_day * DAYS_PER_MONTH * _months_in_year(y.year, self.months)
            for y in self.years
        )

    def cumulative(self) -> list[float]:
        """Cumulative cost at the end of each month (the residual credited in the last)."""
        out, total = [], 0.0
        for m, (c, o) in enumerate(zip(self.monthly_capex, self.monthly_opex, strict=True)):
            total += c + o - (self.residual_value if m == self.months - 1 else 0.0)
            out.append(total)
        return out


def _months_in_year(year: int, months: int) -> int:
    return max(0, min(12, months - 12 * year))


def bound_share(workload: Workload, prices: Prices) -> float:
    """Share of requests that must stay at the edge: private (strict, not pseudonymisable) or
    residency-bound.

    The two are taken as independent: b = 1 - (1 - p)(1 - r), where r sums the residency
    rules that allow the edge region but not the cloud region.
    """
    c = workload.compliance
    p = c.edge_bound_personal_share()
    r = sum(
        rule.share
        for rule in c.residency
        if prices.cloud.region not in rule.allowed and prices.edge.region in rule.allowed
    )
    return 1 - (1 - p) * (1 - min(r, 1.0))


@dataclass
class _Ledger:
    """Monthly capex and opex, and the same amounts summed by category."""

    capex: list[float]
    opex: list[float]
    by_category: dict[str, float] = field(default_factory=dict)
    bought: list[tuple[int, int]] = field(default_factory=list)  # box cohorts: (month, count)
    sites_open: set[str] = field(default_factory=set)

    def add(self, kind: Literal["capex", "opex"], m: int, cat: str, amount: float) -> None:
        getattr(self, kind)[m] += amount
        self.by_category[cat] = self.by_category.get(cat, 0.0) + amount

    def boxes(self) -> int:
        return sum(n for _, n in self.bought)


def _edge_capacity(edge: TierPerformance) -> float:
    if edge.capacity_rps is None:
        raise InputError(
            "the edge tier needs a capacity: give an edge bench file or "
            "prices edge.assumed.capacity_rps",
            field="edge.assumed.capacity_rps",
        )
    return edge.capacity_rps


def plan_year(
    option: Option,
    year: int,
    workload: Workload,
    prices: Prices,
    edge: TierPerformance,
    cloud: TierPerformance,
) -> YearPlan:
    """Sizing of one year: boxes per site, the edge/cloud split, cloud replicas."""
    rpd = workload.requests_per_day * (1 + workload.growth_per_year) ** year
    peak = peak_rps(rpd, workload.peak_to_average)
    h = workload.capacity_headroom
    b = bound_share(workload, prices)
    large = workload.tokens.large_context_share
    boxes: dict[str, int] = {}
    spares: dict[str, int] = {}
    worst = 1.0
    edge_share = {"edge": 1.0, "cloud": 0.0, "hybrid": b}[option]
    spare_rps = 0.0
    if option != "cloud":
        cap = _edge_capacity(edge)
        for site, u in workload.users.regions.items():
            site_peak = peak * u * edge_share
            n = units_needed(site_peak, cap, h)
            k, avail = spares_for(
                n,
                prices.edge.box_availability,
                prices.edge.site_availability,
                workload.availability_target,
            )
            boxes[site], spares[site] = n + k, k
            worst = min(worst, avail)
            spare_rps += max(0.0, n * cap / (1 + h) - site_peak)
    if option == "hybrid":
        # Public requests that fit the edge's spare capacity at peak stay there (the gateway
        # offloads to the cloud only when the edge queues); large-context ones go to the cloud.
        public_small = peak * (1 - b) * (1 - large)
        f = min(1.0, spare_rps / public_small) if public_small > 0 else 0.0
        edge_share = b + (1 - b) * (1 - large) * f
    cloud_share = 1.0 - edge_share
    replicas = 0.0
    c = prices.cloud
    if option != "edge" and c.pricing == "gpu_hour":
        if cloud.capacity_rps is None:
            raise InputError(
                "gpu_hour pricing needs a capacity per replica: give a cloud bench file or "
                "prices cloud.assumed.capacity_rps",
                field="cloud.assumed.capacity_rps",
            )
        peak_n = units_needed(peak * cloud_share, cloud.capacity_rps, h)
        avg = peak_n / workload.peak_to_average if c.autoscaling else peak_n
        replicas = max(float(c.min_replicas), avg)
    return YearPlan(
        year=year,
        requests_per_day=rpd,
        peak_rps=peak,
        edge_share=edge_share,
        cloud_share=cloud_share,
        boxes_by_site=boxes,
        spares_by_site=spares,
        edge_availability=worst,
        cloud_replicas=replicas,
    )


def _edge_month(
    book: _Ledger, m: int, plan: YearPlan, workload: Workload, prices: Prices, edge: TierPerformance
) -> None:
    e, rate = prices.edge, prices.ops_hourly_rate
    life_m = max(1, round(e.box_life_years * 12))
    # Replace boxes at the end of their life, then buy what this year's peak needs.
    for i, (when, n) in enumerate(book.bought):
        if m - when >= life_m:
            book.bought[i] = (m, n)
            book.add("capex", m, "edge hardware", n * (e.box_price + e.install_per_box))
    missing = plan.boxes - book.boxes()
    if missing > 0:
        book.bought.append((m, missing))
        book.add("capex", m, "edge hardware", missing * (e.box_price + e.install_per_box))
    for site, n in plan.boxes_by_site.items():
        if n > 0 and site not in book.sites_open:
            book.sites_open.add(site)
            book.add("capex", m, "edge sites", e.site_setup_cost)
    boxes, sites = book.boxes(), len(book.sites_open)
    edge_requests = plan.requests_per_day * DAYS_PER_MONTH * plan.edge_share
    joules = edge.joules_per_request
    if joules is None:
        joules = (e.busy_watts - e.idle_watts) / _edge_capacity(edge)
    kwh = (boxes * e.idle_watts * HOURS_PER_MONTH + edge_requests * joules / 3600) / 1000
    book.add("opex", m, "edge power", kwh * e.power_per_kwh)
    book.add("opex", m, "edge sites", sites * e.site_cost_per_month)
    hours = sites * e.ops_hours_per_site_per_month + boxes * e.ops_hours_per_box_per_month
    book.add("opex", m, "edge operations", hours * rate)
    maintenance = boxes * e.box_price * e.maintenance_share_per_year / 12
    book.add("opex", m, "edge maintenance", maintenance)


def _cloud_month(book: _Ledger, m: int, plan: YearPlan, workload: Workload, prices: Prices) -> None:
    c, t = prices.cloud, workload.tokens
    if m == 0:
        book.add("capex", m, "cloud setup", c.setup_cost)
    cloud_requests = plan.requests_per_day * DAYS_PER_MONTH * plan.cloud_share
    if c.pricing == "per_token":
        per_request = (
            t.input_per_request * c.input_per_mtok + t.output_per_request * c.output_per_mtok
        ) / 1e6
        usage = cloud_requests * per_request
    else:
        usage = plan.cloud_replicas * c.gpus_per_replica * c.gpu_hour * HOURS_PER_MONTH
    book.add("opex", m, "cloud usage", usage)
    book.add("opex", m, "cloud egress", cloud_requests * t.payload_kb() / 1e6 * c.egress_per_gb)
    ops = c.fixed_per_month + c.ops_hours_per_month * prices.ops_hourly_rate
    book.add("opex", m, "cloud operations", ops)


def option_cost(
    option: Option,
    workload: Workload,
    prices: Prices,
    edge: TierPerformance,
    cloud: TierPerformance,
) -> OptionCost:
    """Month-by-month capex and opex of one option; see docs/decide.md for each term."""
    months = workload.months()
    years = [
        plan_year(option, y, workload, prices, edge, cloud) for y in range((months + 11) // 12)
    ]
    book = _Ledger(capex=[0.0] * months, opex=[0.0] * months)
    for m in range(months):
        plan = years[m // 12]
        if option != "cloud":
            _edge_month(book, m, plan, workload, prices, edge)
        if option != "edge":
            _cloud_month(book, m, plan, workload, prices)
    e = prices.edge
    life_m = max(1, round(e.box_life_years * 12))
    residual = sum(
        n * e.box_price * e.resale_share * max(0.0, 1 - (months - when) / life_m)
        for when, n in book.bought
    )
    if residual:
        book.by_category["edge resale"] = -residual
    for plan in years:
        first, last = plan.year * 12, min(months, plan.year * 12 + 12)
        plan.capex = sum(book.capex[first:last])
        plan.opex = sum(book.opex[first:last])
    return OptionCost(
        option=option,
        currency=prices.currency,
        months=months,
        monthly_capex=book.capex,
        monthly_opex=book.opex,
        residual_value=residual,
        by_category=book.by_category,
        years=years,
    )
