"""Checks, choice and reasons; the choice flips where the hand-computed thresholds say."""

from __future__ import annotations

import pytest

from edgecloud.decide.decision import choose, evaluate_options, explain
from edgecloud.decide.sensitivity import break_even_volume
from tests.decide.decide_samples import inputs, perf, prices, workload

# With the sample prices, edge-only costs 1000 + 438 + 7,200 = 8,638 a year for one box and
# cloud-only 1,200 + 0.73 per request/day: they meet at 7,438 / 0.73 = 10,189 requests/day.
BREAK_EVEN = 7438 / 0.73


def _choice(**over: object) -> str | None:
    p_over = {k[2:]: v for k, v in over.items() if k.startswith("p_")}
    w_over = {k: v for k, v in over.items() if not k.startswith("p_")}
    return choose(evaluate_options(inputs(workload(**w_over), prices(**p_over))))


def test_cheapest_feasible_option_wins() -> None:
    opts = evaluate_options(inputs())
    assert opts["edge"].cost.tco == pytest.approx(10_076)
    assert opts["cloud"].cost.tco == pytest.approx(64_272)
    assert all(r.feasible for r in opts.values())
    assert choose(opts) == "edge"


def test_break_even_matches_the_hand_computed_volume() -> None:
    assert break_even_volume(inputs()) == pytest.approx(BREAK_EVEN, rel=1e-3)


def test_volume_flips_the_choice_at_break_even() -> None:
    assert _choice(requests_per_day=BREAK_EVEN * 0.95) == "cloud"
    assert _choice(requests_per_day=BREAK_EVEN * 1.05) == "edge"


def test_any_strict_personal_data_rules_out_the_cloud() -> None:
    low = BREAK_EVEN / 2  # where cloud would be cheaper
    assert _choice(requests_per_day=low) == "cloud"
    assert _choice(requests_per_day=low, compliance={"personal_data_share": 0.01}) == "edge"
    lax = {"personal_data_share": 0.5, "strict": False}
    assert _choice(requests_per_day=low, compliance=lax) == "cloud"


def test_residency_flips_when_the_cloud_region_is_not_allowed() -> None:
    low = BREAK_EVEN / 2
    ok = {"residency": [{"region": "eu", "share": 0.2, "allowed": ["eu-central-1", "device"]}]}
    assert _choice(requests_per_day=low, compliance=ok) == "cloud"
    assert _choice(requests_per_day=low, compliance=ok, p_cloud__region="us-east-1") == "edge"


def test_prices_flip_the_choice() -> None:
    # Cloud: 1,200 + 63,072 k; edge: 10,076. Equal at k = 8,876 / 63,072 = 0.1407.
    assert _choice(p_cloud__input_per_mtok=0.13, p_cloud__output_per_mtok=1.3) == "cloud"
    assert _choice(p_cloud__input_per_mtok=0.15, p_cloud__output_per_mtok=1.5) == "edge"
    # Edge: 2 B + 8,076 against 64,272: equal at B = 28,098.
    assert _choice(p_edge__box_price=27_000) == "edge"
    assert _choice(p_edge__box_price=29_000) == "cloud"


def test_temporary_need_goes_to_the_cloud() -> None:
    assert _choice(p_edge__box_price=20_000) == "edge"
    assert _choice(p_edge__box_price=20_000, duration_months=2) == "cloud"
    i = inputs(workload(duration_months=2), prices(edge__box_price=20_000))
    opts = evaluate_options(i)
    reasons = explain(i, opts, choose(opts))
    assert any(r.kind == "duration" and r.favours == "cloud" for r in reasons)


def test_global_users_go_to_the_cloud() -> None:
    regions = {"a": 0.4, "b": 0.3, "c": 0.3}
    assert _choice(p_edge__box_price=20_000) == "edge"
    assert _choice(p_edge__box_price=20_000, users={"regions": regions}) == "cloud"


def test_large_context_with_private_data_needs_the_hybrid() -> None:
    got = _choice(
        tokens={"input_per_request": 1000, "output_per_request": 100, "large_context_share": 0.1},
        compliance={"personal_data_share": 0.3},
    )
    assert got == "hybrid"


def test_slo_missed_by_a_tier_rules_it_out() -> None:
    slow_edge = perf("edge", 1.0, ttft=5000)
    opts = evaluate_options(inputs(edge=slow_edge))
    assert not opts["edge"].check("slo").passed
    assert choose(opts) == "cloud"


def test_availability_below_target_rules_the_edge_out() -> None:
    p = prices(edge__site_availability=0.98)
    opts = evaluate_options(inputs(workload(availability_target=0.99), p))
    assert not opts["edge"].check("availability").passed
    assert opts["cloud"].check("availability").passed
    assert choose(opts) == "cloud"


def test_no_compliant_option_gives_no_recommendation() -> None:
    rule = {"region": "cn", "share": 0.1, "allowed": ["cn-north-1"]}
    assert _choice(compliance={"residency": [rule]}) is None


def test_reasons_rank_rules_before_cost() -> None:
    i = inputs(workload(compliance={"personal_data_share": 0.2}))
    opts = evaluate_options(i)
    chosen = choose(opts)
    reasons = explain(i, opts, chosen, break_even_volume(i))
    assert chosen == "edge"
    assert reasons[0].kind == "compliance" and "cloud-only" in reasons[0].text
    kinds = [r.kind for r in reasons]
    assert kinds.index("cost") < kinds.index("volume")
    assert [r.rank for r in reasons] == list(range(1, len(reasons) + 1))


def test_equal_cost_prefers_one_tier() -> None:
    # No bound share: the hybrid has no edge and costs exactly the cloud-only amount.
    opts = evaluate_options(inputs(workload(requests_per_day=1000)))
    assert opts["hybrid"].cost.tco == pytest.approx(opts["cloud"].cost.tco)
    assert choose(opts) == "cloud"


def test_compliance_share_moves_the_answer_cloud_hybrid_edge() -> None:
    # 432,000 requests/day: peak 10 rps, 10 boxes of 20,000 for edge-only: 211,580 a year.
    # Cloud at half price: 157,680 + 1,200. The hybrid with n boxes serves n/10 of the requests:
    # 166,080 + 4,670 n, cheaper than edge-only while n <= 9, i.e. personal data share <= 0.9.
    def at(share: float) -> str | None:
        return _choice(
            requests_per_day=432_000,
            compliance={"personal_data_share": share},
            p_edge__box_price=20_000,
            p_cloud__input_per_mtok=0.5,
            p_cloud__output_per_mtok=5.0,
        )

    assert at(0.0) == "cloud"
    assert at(0.1) == "hybrid"
    assert at(0.9) == "hybrid"
    assert at(0.91) == "edge"
