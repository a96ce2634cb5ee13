"""Properties of the cost model that hold for any valid inputs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.decide.decision import choose, evaluate_options
from edgecloud.decide.sensitivity import with_volume
from tests.decide.decide_samples import inputs, perf, prices, workload

profiles = st.fixed_dictionaries(
    {
        "requests_per_day": st.floats(100, 5e6),
        "peak_to_average": st.floats(1, 6),
        "growth_per_year": st.floats(-0.5, 1.0),
        "horizon_years": st.integers(1, 4),
        "capacity_headroom": st.floats(0, 0.5),
        "compliance": st.fixed_dictionaries(
            {"personal_data_share": st.floats(0, 1), "strict": st.booleans()}
        ),
        "tokens": st.fixed_dictionaries(
            {
                "input_per_request": st.floats(0, 4000),
                "output_per_request": st.floats(1, 1000),
                "large_context_share": st.floats(0, 0.5),
            }
        ),
    }
)
quotes = st.fixed_dictionaries(
    {
        "edge__box_price": st.floats(0, 50_000),
        "edge__busy_watts": st.floats(100, 1000),
        "edge__resale_share": st.floats(0, 1),
        "edge__box_life_years": st.floats(0.5, 5),
        "cloud__egress_per_gb": st.floats(0, 1),
    }
)


@settings(max_examples=60, deadline=None)
@given(profiles, quotes, st.floats(0.05, 20))
def test_costs_add_up_and_shares_stay_in_range(w: dict, p: dict, cap: float) -> None:
    i = inputs(workload(**w), prices(**p), edge=perf("edge", cap))
    opts = evaluate_options(i)
    for r in opts.values():
        c = r.cost
        assert sum(c.by_category.values()) == pytest.approx(c.tco, rel=1e-9, abs=1e-6)
        assert c.cumulative()[-1] == pytest.approx(c.tco, rel=1e-9, abs=1e-6)
        assert c.capex >= -1e-6 and c.opex >= 0
        for y in c.years:
            assert -1e-12 <= y.edge_share <= 1 + 1e-12
            assert y.edge_share + y.cloud_share == pytest.approx(1)
    chosen = choose(opts)
    if chosen is not None:
        assert opts[chosen].check("compliance").passed
        if any(r.feasible for r in opts.values()):
            assert opts[chosen].feasible


@settings(max_examples=40, deadline=None)
@given(profiles, st.floats(1.01, 10))
def test_more_volume_never_costs_less(w: dict, factor: float) -> None:
    i = inputs(workload(**w), prices(edge__box_price=5000))
    more = with_volume(i, i.workload.requests_per_day * factor)
    for option in ("edge", "cloud"):
        assert (
            evaluate_options(more)[option].cost.tco >= evaluate_options(i)[option].cost.tco - 1e-6
        )
