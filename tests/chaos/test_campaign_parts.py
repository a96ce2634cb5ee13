"""The campaign's own parts, without the stack: the half-window fault and the tail statistic."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from edgecloud.testing.chaos.campaign import P99_MIN_SAMPLES, all_faults, tail_note
from edgecloud.testing.chaos.stack import ChaosStack
from edgecloud.testing.polling import settle, wait_until

FAIL_THEN_OK = all_faults()["upstream:500_then_200"]


class RecordingStack:
    """Plays the stack's stand-in control: records each setting with when it was made."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, Any]]] = []

    def standin_control(self, **settings: Any) -> None:
        self.calls.append((time.monotonic(), settings))


def test_fail_then_ok_fails_only_the_first_half_of_the_window() -> None:
    stack = RecordingStack()
    t0 = time.monotonic()
    with FAIL_THEN_OK(cast(ChaosStack, stack), 0.4):
        time.sleep(0.4)
    settings = [c[1] for c in stack.calls]
    assert settings[0] == {"fail": 500}
    assert settings[1] == {"fail": None}  # healed by the timer, inside the window
    assert stack.calls[1][0] - t0 < 0.4
    assert stack.calls[-1][1] == {"fail": None}


def test_fail_then_ok_heals_when_the_window_is_cut_short() -> None:
    stack = RecordingStack()
    with FAIL_THEN_OK(cast(ChaosStack, stack), 60.0):
        pass
    assert [c[1] for c in stack.calls] == [{"fail": 500}, {"fail": None}]


def test_tail_is_the_max_below_200_samples_and_the_p99_from_200() -> None:
    few = [0.01] * 11 + [0.5]
    assert tail_note(few, few).startswith("max of 12/12 500->500 ms")
    many = [0.01] * (P99_MIN_SAMPLES - 1) + [5.0]
    note = tail_note(many, many)
    assert note.startswith(f"p99 of {P99_MIN_SAMPLES}/{P99_MIN_SAMPLES} ")
    assert "->5000 ms" not in note  # one outlier in 200 is above the p99


def test_settle_says_how_long_it_took_or_what_was_left() -> None:
    calls = iter([["a", "b"], ["b"], []])
    took, left = settle(lambda: next(calls), 5.0, 0.01)
    assert took is not None and left == []
    took, left = settle(lambda: ["stuck"], 0.05, 0.01)
    assert took is None and left == ["stuck"]


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match="the thing"):
        wait_until(lambda: False, 0.05, "the thing", 0.01)
    flips = iter([False, True])
    assert wait_until(lambda: next(flips), 5.0, "x", 0.01) >= 0.0
