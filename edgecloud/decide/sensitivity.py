"""How the answer moves: break-even volume, the volume where the choice flips, the tornado.

Pure: each function re-runs the cost model on changed copies of the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel

from edgecloud.decide.decision import DecisionInputs, choose, evaluate_options
from edgecloud.decide.tco import OPTIONS, Option, option_cost

SPAN = 1000.0  # volumes searched: current / SPAN .. current x SPAN
GRID = 81
BISECT_STEPS = 40
SWING = 0.5  # the tornado moves each input by +-50%


class FlipPoint(BaseModel):
    requests_per_day: float
    direction: str  # "below" | "above"
    to: Option | None


class TornadoBar(BaseModel):
    name: str
    low_value: float  # the input at -50% and +50%
    high_value: float
    low_tco: float  # TCO of the base choice with the input at -50% / +50%
    high_tco: float
    low_choice: Option | None
    high_choice: Option | None

    @property
    def swing(self) -> float:
        return abs(self.high_tco - self.low_tco)


def with_volume(inputs: DecisionInputs, rpd: float) -> DecisionInputs:
    w = inputs.workload.model_copy(update={"requests_per_day": rpd})
    return inputs.model_copy(update={"workload": w})


def _grid(rpd: float) -> list[float]:
    return [float(v) for v in np.geomspace(rpd / SPAN, rpd * SPAN, GRID)]


def _bisect(lo: float, hi: float, same_as_lo: Callable[[float], bool]) -> float:
    """The boundary between lo and hi (log scale), where `same_as_lo` stops holding."""
    for _ in range(BISECT_STEPS):
        mid = math.sqrt(lo * hi)
        if same_as_lo(mid):
            lo = mid
        else:
            hi = mid
    return hi


def edge_minus_cloud(inputs: DecisionInputs) -> float:
    """TCO of edge-only minus cloud-only, ignoring the checks."""
    w, p, e, c = inputs.workload, inputs.prices, inputs.edge, inputs.cloud
    return option_cost("edge", w, p, e, c).tco - option_cost("cloud", w, p, e, c).tco


def break_even_volume(inputs: DecisionInputs) -> float | None:
    """The lowest requests/day above which edge-only stays cheaper than cloud-only.

    None when edge is cheaper at every volume searched, or never cheaper.
    """
    grid = _grid(inputs.workload.requests_per_day)
    cheaper = [edge_minus_cloud(with_volume(inputs, v)) <= 0 for v in grid]
    if all(cheaper) or not cheaper[-1]:
        return None
    i = max(k for k, c in enumerate(cheaper) if not c)
    return _bisect(grid[i], grid[i + 1], lambda v: edge_minus_cloud(with_volume(inputs, v)) > 0)


def _choice_at(inputs: DecisionInputs, rpd: float) -> Option | None:
    return choose(evaluate_options(with_volume(inputs, rpd)))


def flip_volumes(inputs: DecisionInputs) -> list[FlipPoint]:
    """The nearest volume below and above the current one where the choice changes."""
    rpd = inputs.workload.requests_per_day
    base = _choice_at(inputs, rpd)
    out = []
    for direction, factor in (("below", 1 / SPAN), ("above", SPAN)):
        steps = np.geomspace(rpd, rpd * factor, GRID // 2 + 1)[1:]
        prev = rpd
        for v in steps:
            choice = _choice_at(inputs, float(v))
            if choice != base:
                edge = _bisect(prev, float(v), lambda x: _choice_at(inputs, x) == base)
                out.append(
                    FlipPoint(
                        requests_per_day=edge, direction=direction, to=_choice_at(inputs, edge)
                    )
                )
                break
            prev = float(v)
    return out


def _scale_tokens(inputs: DecisionInputs, k: float) -> DecisionInputs:
    w = inputs.workload
    t = w.tokens.model_copy(
        update={
            "input_per_request": w.tokens.input_per_request * k,
            "output_per_request": w.tokens.output_per_request * k,
        }
    )
    # Capacity in requests/s falls as requests grow (the box's token rate stays).
    e = inputs.edge.model_copy(update={"capacity_rps": _div(inputs.edge.capacity_rps, k)})
    c = inputs.cloud.model_copy(update={"capacity_rps": _div(inputs.cloud.capacity_rps, k)})
    return inputs.model_copy(
        update={"workload": w.model_copy(update={"tokens": t}), "edge": e, "cloud": c}
    )


def _div(x: float | None, k: float) -> float | None:
    return None if x is None else x / k


def _workload(
    field: str, lo: float = 0.0, hi: float = math.inf
) -> Callable[[DecisionInputs, float], DecisionInputs]:
    def apply(inputs: DecisionInputs, k: float) -> DecisionInputs:
        w = inputs.workload
        value = min(hi, max(lo, getattr(w, field) * k))
        return inputs.model_copy(update={"workload": w.model_copy(update={field: value})})

    return apply


def _personal(inputs: DecisionInputs, k: float) -> DecisionInputs:
    w = inputs.workload
    c = w.compliance.model_copy(
        update={"personal_data_share": min(1.0, w.compliance.personal_data_share * k)}
    )
    return inputs.model_copy(update={"workload": w.model_copy(update={"compliance": c})})


def _price(section: str, *fields: str) -> Callable[[DecisionInputs, float], DecisionInputs]:
    def apply(inputs: DecisionInputs, k: float) -> DecisionInputs:
        p = inputs.prices
        if section == "":
            new = p.model_copy(update={f: getattr(p, f) * k for f in fields})
        else:
            part = getattr(p, section)
            part = part.model_copy(update={f: getattr(part, f) * k for f in fields})
            new = p.model_copy(update={section: part})
        return inputs.model_copy(update={"prices": new})

    return apply


def _edge_capacity(inputs: DecisionInputs, k: float) -> DecisionInputs:
    e = inputs.edge
    return inputs.model_copy(
        update={
            "edge": e.model_copy(
                update={"capacity_rps": None if e.capacity_rps is None else e.capacity_rps * k}
            )
        }
    )


def factors(
    inputs: DecisionInputs,
) -> dict[str, tuple[float, Callable[[DecisionInputs, float], DecisionInputs]]]:
    """The main inputs the tornado moves: name -> (current value, apply a factor)."""
    w, p = inputs.workload, inputs.prices
    cloud_price = (
        ("cloud price per GPU hour", p.cloud.gpu_hour, ("gpu_hour",))
        if p.cloud.pricing == "gpu_hour"
        else (
            "cloud price per output Mtok",
            p.cloud.output_per_mtok,
            ("input_per_mtok", "output_per_mtok"),
        )
    )
    return {
        "requests per day": (w.requests_per_day, _workload("requests_per_day")),
        "peak / average": (w.peak_to_average, _workload("peak_to_average", lo=1.0)),
        "growth per year": (w.growth_per_year, _workload("growth_per_year", lo=-0.99)),
        "personal data share": (w.compliance.personal_data_share, _personal),
        "tokens per request": (
            w.tokens.input_per_request + w.tokens.output_per_request,
            _scale_tokens,
        ),
        cloud_price[0]: (cloud_price[1], _price("cloud", *cloud_price[2])),
        "edge box price": (p.edge.box_price, _price("edge", "box_price")),
        "edge capacity per box": (inputs.edge.capacity_rps or 0.0, _edge_capacity),
        "power price": (p.edge.power_per_kwh, _price("edge", "power_per_kwh")),
        "operations hourly rate": (p.ops_hourly_rate, _price("", "ops_hourly_rate")),
    }


def tornado(inputs: DecisionInputs, base_choice: Option) -> list[TornadoBar]:
    """Each main input at -50% and +50%: the base choice's TCO and the choice then made."""
    bars = []
    for name, (value, apply) in factors(inputs).items():
        ends = []
        for k in (1 - SWING, 1 + SWING):
            moved = apply(inputs, k)
            opts = evaluate_options(moved)
            ends.append((opts[base_choice].cost.tco, choose(opts)))
        bars.append(
            TornadoBar(
                name=name,
                low_value=value * (1 - SWING),
                high_value=value * (1 + SWING),
                low_tco=ends[0][0],
                high_tco=ends[1][0],
                low_choice=ends[0][1],
                high_choice=ends[1][1],
            )
        )
    return sorted(bars, key=lambda b: -b.swing)


def cost_per_1k_curve(
    inputs: DecisionInputs, points: int = 25, span: float = 20.0
) -> dict[str, list[float]]:
    """Cost per 1,000 requests of each option over a range of volumes (for the chart)."""
    rpd = inputs.workload.requests_per_day
    volumes = [float(v) for v in np.geomspace(rpd / span, rpd * span, points)]
    out: dict[str, list[float]] = {"requests_per_day": volumes}
    for option in OPTIONS:
        out[option] = []
    for v in volumes:
        moved = with_volume(inputs, v)
        w, p, e, c = moved.workload, moved.prices, moved.edge, moved.cloud
        for option in OPTIONS:
            cost = option_cost(option, w, p, e, c)
            out[option].append(cost.tco / cost.total_requests * 1000)
    return out
