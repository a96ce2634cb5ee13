"""The TCO engine against hand-computed cases (see docs/decide.md, "Costs")."""

from __future__ import annotations

import pytest

from edgecloud.decide.tco import bound_share, option_cost
from tests.decide.decide_samples import perf, prices, workload

EDGE, CLOUD = perf("edge", 1.0), perf("cloud", None)


def test_edge_only_one_year_by_hand() -> None:
    # 2 boxes (peak 2 rps, 1 rps each): capex 2 x 1000; power 2 x 100 W x 730 h = 146 kWh x 0.5
    # = 73/month; site 100/month; ops 10 h x 50 = 500/month.
    cost = option_cost("edge", workload(), prices(), EDGE, CLOUD)
    assert cost.years[0].boxes == 2
    assert cost.capex == pytest.approx(2000)
    assert cost.monthly_opex[0] == pytest.approx(73 + 100 + 500)
    assert cost.tco == pytest.approx(2000 + 12 * 673)
    assert cost.by_category["edge power"] == pytest.approx(876)


def test_cloud_only_one_year_by_hand() -> None:
    # 86,400/day x 365/12 = 2,628,000 requests/month x (1000 x 1 + 100 x 10)/1e6 = 5,256/month.
    cost = option_cost("cloud", workload(), prices(), EDGE, CLOUD)
    assert cost.capex == 0
    assert cost.monthly_opex[0] == pytest.approx(5256 + 100)
    assert cost.tco == pytest.approx(12 * 5356)


def test_dynamic_energy_per_request() -> None:
    # busy 200 W, idle 100 W, 1 rps per box: 100 J per request on top of idle power.
    p = prices(edge__busy_watts=200)
    cost = option_cost("edge", workload(), p, EDGE, CLOUD)
    kwh = (2 * 100 * 730 + 2_628_000 * 100 / 3600) / 1000
    assert cost.monthly_opex[0] == pytest.approx(kwh * 0.5 + 600)


def test_growth_buys_boxes_and_end_of_life_replaces_them() -> None:
    w = workload(horizon_years=2, growth_per_year=1.0)
    p = prices(edge__box_life_years=1)
    cost = option_cost("edge", w, p, EDGE, CLOUD)
    assert [y.boxes for y in cost.years] == [2, 4]
    assert cost.monthly_capex[0] == pytest.approx(2000)
    assert cost.monthly_capex[12] == pytest.approx(4000)  # 2 replaced + 2 added


def test_residual_value_is_credited_pro_rata() -> None:
    p = prices(edge__box_life_years=2, edge__resale_share=0.5)
    cost = option_cost("edge", workload(), p, EDGE, CLOUD)
    assert cost.residual_value == pytest.approx(2 * 1000 * 0.5 * (1 - 12 / 24))
    assert cost.cumulative()[-1] == pytest.approx(cost.tco)


def test_gpu_hour_replicas_follow_the_day_when_autoscaled() -> None:
    p = prices(cloud__pricing="gpu_hour", cloud__gpu_hour=2.0)
    cloud = perf("cloud", 0.5)
    cost = option_cost("cloud", workload(), p, EDGE, cloud)
    # peak 2 rps / 0.5 per replica = 4 replicas at peak, 4 / 2 = 2 on average.
    assert cost.years[0].cloud_replicas == pytest.approx(2)
    assert cost.by_category["cloud usage"] == pytest.approx(12 * 2 * 730 * 2.0)
    fixed = option_cost(
        "cloud",
        workload(),
        prices(cloud__pricing="gpu_hour", cloud__gpu_hour=2.0, cloud__autoscaling=False),
        EDGE,
        cloud,
    )
    assert fixed.years[0].cloud_replicas == pytest.approx(4)


def test_bound_share_combines_privacy_and_residency() -> None:
    rule = {"region": "eu", "share": 0.2, "allowed": ["device"]}
    w = workload(compliance={"personal_data_share": 0.5, "residency": [rule]})
    assert bound_share(w, prices()) == pytest.approx(1 - 0.5 * 0.8)
    allowed_in_cloud = {**rule, "allowed": ["device", "eu-central-1"]}
    w2 = workload(compliance={"personal_data_share": 0.5, "residency": [allowed_in_cloud]})
    assert bound_share(w2, prices()) == pytest.approx(0.5)
    lax = workload(compliance={"personal_data_share": 0.5, "strict": False})
    assert bound_share(lax, prices()) == 0


def test_hybrid_keeps_bound_share_at_edge_and_fills_spare_capacity() -> None:
    w = workload(compliance={"personal_data_share": 0.5})
    tight = option_cost("hybrid", w, prices(), EDGE, CLOUD).years[0]
    assert tight.boxes == 1 and tight.edge_share == pytest.approx(0.5)  # no spare: 1 box, 1 rps
    roomy = option_cost("hybrid", w, prices(), perf("edge", 1.5), CLOUD).years[0]
    # 1 box of 1.5 rps: 0.5 rps spare for 1 rps of public peak -> half of it stays at the edge.
    assert roomy.edge_share == pytest.approx(0.75)


def test_sites_per_user_region() -> None:
    w = workload(users={"regions": {"a": 0.5, "b": 0.5}})
    cost = option_cost("edge", w, prices(), EDGE, CLOUD)
    assert cost.years[0].boxes_by_site == {"a": 1, "b": 1}
    assert cost.monthly_opex[0] == pytest.approx(73 + 2 * (100 + 500))


def test_a_short_workload_runs_costs_for_its_months_only() -> None:
    cost = option_cost("cloud", workload(duration_months=2), prices(), EDGE, CLOUD)
    assert cost.months == 2
    assert cost.tco == pytest.approx(2 * 5356)
