"""Break-even, flip volumes and the tornado."""

from __future__ import annotations

import pytest

from edgecloud.decide.analysis import decide
from edgecloud.decide.decision import choose, evaluate_options
from edgecloud.decide.sensitivity import (
    cost_per_1k_curve,
    edge_minus_cloud,
    flip_volumes,
    tornado,
    with_volume,
)
from tests.decide.decide_samples import inputs, prices, workload

BREAK_EVEN = 7438 / 0.73


def test_flip_volume_is_where_the_choice_changes() -> None:
    i = inputs()
    flips = flip_volumes(i)
    below = next(f for f in flips if f.direction == "below")
    assert below.requests_per_day == pytest.approx(BREAK_EVEN, rel=1e-3)
    assert below.to == "cloud"
    v = below.requests_per_day
    assert choose(evaluate_options(with_volume(i, v * 0.99))) == "cloud"
    assert choose(evaluate_options(with_volume(i, v * 1.01))) == "edge"


def test_edge_minus_cloud_changes_sign_at_break_even() -> None:
    i = inputs()
    assert edge_minus_cloud(with_volume(i, BREAK_EVEN * 0.99)) > 0
    assert edge_minus_cloud(with_volume(i, BREAK_EVEN * 1.01)) < 0


def test_tornado_moves_each_input_by_half_and_reports_flips() -> None:
    i = inputs(p=prices(edge__box_price=20_000))
    bars = tornado(i, "edge")
    swings = [b.swing for b in bars]
    assert swings == sorted(swings, reverse=True)
    box = next(b for b in bars if b.name == "edge box price")
    assert box.low_value == 10_000 and box.high_value == 30_000
    # Edge TCO = 2 B + 8,076: -50% -> 28,076, +50% -> 68,076, where the cloud (64,272) wins.
    assert box.low_tco == pytest.approx(28_076)
    assert box.high_tco == pytest.approx(68_076)
    assert box.low_choice == "edge" and box.high_choice == "cloud"


def test_cost_per_1k_falls_with_volume_for_the_edge() -> None:
    curve = cost_per_1k_curve(inputs(), points=5)
    assert len(curve["requests_per_day"]) == 5
    assert curve["edge"][0] > curve["edge"][-1]
    # The cloud is linear in volume: the same cost per request apart from its fixed fee.
    assert curve["cloud"][-1] == pytest.approx(2.0 + 1200 / (86_400 * 20 * 365) * 1000, rel=1e-3)


def test_decide_assembles_everything() -> None:
    d = decide(inputs(workload(compliance={"personal_data_share": 0.1})))
    assert d.recommended == "edge" and d.meets_all_checks
    assert d.tornado and d.reasons and d.cost_curve
    assert d.break_even_requests_per_day == pytest.approx(BREAK_EVEN, rel=1e-3)
