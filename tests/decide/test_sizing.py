"""Sizing formulas against hand-computed values."""

from __future__ import annotations

import pytest

from edgecloud.decide.sizing import at_least_up, peak_rps, spares_for, units_needed


def test_peak_rate_is_average_rate_times_peak_to_average() -> None:
    assert peak_rps(86_400, 2.5) == pytest.approx(2.5)


def test_units_cover_peak_with_headroom_rounded_up() -> None:
    assert units_needed(2.0, 1.0, 0.0) == 2
    assert units_needed(2.0, 1.0, 0.2) == 3  # 2.4 -> 3
    assert units_needed(3.0, 1.5, 0.0) == 2  # exactly 2, float noise must not make it 3
    assert units_needed(0.0, 1.0, 0.2) == 0


def test_binomial_tail() -> None:
    assert at_least_up(1, 2, 0.9) == pytest.approx(0.99)
    assert at_least_up(2, 3, 0.9) == pytest.approx(0.972)


def test_spares_reach_the_target() -> None:
    # n=2, a=0.9: k=0 -> 0.81, k=1 -> 0.972, k=2 -> 0.9963
    k, reached = spares_for(2, 0.9, 1.0, 0.99)
    assert k == 2
    assert reached == pytest.approx(0.9963)
    assert spares_for(2, 1.0, 1.0, 0.999) == (0, 1.0)


def test_site_below_target_keeps_one_spare_and_shows_the_shortfall() -> None:
    k, reached = spares_for(2, 0.9, 0.98, 0.99)
    assert k == 1
    assert reached == pytest.approx(0.98 * 0.972)
