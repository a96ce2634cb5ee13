"""The pure rollout core: cohorts, version choice, gates and controller steps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecloud.fleet.cohort import cohort_bucket, in_cohort
from edgecloud.fleet.rollout import (
    DeviceReading,
    GateResult,
    Gates,
    ModelRelease,
    RolloutPlan,
    RolloutState,
    choose_release,
    evaluate_gates,
    next_step,
)


def _rel(version: str, stage: str = "stable", percent: float = 100, **kw: object) -> ModelRelease:
    return ModelRelease.model_validate(
        {
            "model": "m",
            "version": version,
            "size": 1,
            "sha256": "0" * 64,
            "rollout": {"stage": stage, "percent": percent},
            **kw,
        }
    )


@given(st.text(min_size=1, max_size=40), st.floats(0, 100), st.floats(0, 100))
def test_cohorts_grow_monotonically(device: str, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    if in_cohort(device, "m", lo):
        assert in_cohort(device, "m", hi)


def test_cohort_is_stable_and_roughly_uniform() -> None:
    assert cohort_bucket("dev-1", "m") == cohort_bucket("dev-1", "m")
    inside = sum(in_cohort(f"dev-{i}", "m", 25) for i in range(4000))
    assert 800 < inside < 1200
    assert not in_cohort("x", "m", 0) and in_cohort("x", "m", 100)


def test_devices_outside_the_cohort_stay_on_stable() -> None:
    releases = [_rel("1.0.0"), _rel("1.1.0", "staged", 5)]
    for i in range(300):
        d = f"dev-{i}"
        got = choose_release(releases, "m", d, "1.0.0").release
        assert got is not None
        assert got.version == ("1.1.0" if in_cohort(d, "m", 5) else "1.0.0")


def test_aborted_and_failed_versions_are_not_chosen() -> None:
    releases = [_rel("1.0.0"), _rel("1.1.0", "aborted", 0), _rel("1.2.0", "staged", 100)]
    assert choose_release(releases, "m", "d", "1.0.0").release.version == "1.2.0"  # type: ignore[union-attr]
    c = choose_release(releases, "m", "d", "1.0.0", failed_versions=["1.2.0"])
    assert c.release is not None and c.release.version == "1.0.0"
    assert c.refused and c.refused[0][0] == "1.2.0"


def test_a_release_for_newer_agents_is_refused_with_a_reason() -> None:
    releases = [_rel("1.0.0"), _rel("2.0.0", min_agent_version="9.0.0")]
    c = choose_release(releases, "m", "d", "1.0.0")
    assert c.release is not None and c.release.version == "1.0.0"
    assert c.refused == [("2.0.0", "needs agent >= 9.0.0")]


def test_gates() -> None:
    gates = Gates(max_error_rate=0.1, max_p95_ms=500, min_eval_score=0.8, max_failures=0)
    good = [DeviceReading("a", "2", 0.0, 100, 1.0), DeviceReading("b", "2", 0.05, 400, 0.9)]
    assert evaluate_gates(gates, "2", good).ok
    slow = [*good, DeviceReading("c", "2", 0.0, 900, 1.0)]
    r = evaluate_gates(gates, "2", slow)
    assert not r.ok and "p95_ms" in r.failures[0]
    failed = [*good, DeviceReading("c", "2", failed=True)]
    assert not evaluate_gates(gates, "2", failed).ok
    other = [DeviceReading("z", "1", 1.0, 9999, 0.0)]  # devices on other versions don't count
    assert evaluate_gates(gates, "2", other).ok


def test_steps() -> None:
    ok = GateResult(True, {}, [], reports=3)
    plan = RolloutPlan(stages=[5, 25, 100], soak_s=10, min_reports=2)
    s = RolloutState(stage="staged", percent=5, plan=plan, stage_started_at=100)
    assert next_step(s, ok, 105).action == "hold"
    step = next_step(s, ok, 111)
    assert (step.action, step.percent) == ("advance", 25)
    assert next_step(s.model_copy(update={"percent": 100}), ok, 111).action == "complete"
    assert next_step(s, GateResult(True, {}, [], reports=1), 111).action == "hold"
    bad = next_step(s, GateResult(False, {}, ["p95_ms 900 > 500"], 3), 101)
    assert bad.action == "abort" and "p95_ms" in bad.reason
    manual = s.model_copy(update={"plan": plan.model_copy(update={"auto": False})})
    assert next_step(manual, ok, 1000).action == "hold"


def test_plans_are_validated() -> None:
    with pytest.raises(ValueError, match="stages"):
        RolloutPlan(stages=[25, 5])
    with pytest.raises(ValueError):
        _rel("not-a-version")


def test_metric_gates_wait_for_a_quorum_of_distinct_devices() -> None:
    gates = Gates(max_error_rate=0.1)
    bad = [DeviceReading("d1", "1.1.0", error_rate=0.9)]
    # one device (reporting twice) cannot abort, nor promote, a rollout needing three
    held = evaluate_gates(gates, "1.1.0", bad + bad, quorum=3)
    assert held.ok and held.reports == 1
    state = RolloutState(stage="staged", percent=5, plan=RolloutPlan(min_reports=3, soak_s=0))
    assert next_step(state, held, now=100).action == "hold"
    good = [DeviceReading(f"d{i}", "1.1.0", error_rate=0.0) for i in (2, 3)]
    judged = evaluate_gates(gates, "1.1.0", bad + good, quorum=3)
    assert not judged.ok and next_step(state, judged, now=100).action == "abort"
    # a device that rolled the version back aborts at once (fail safe)
    failed = evaluate_gates(gates, "1.1.0", [DeviceReading("d1", "1.1.0", failed=True)], 3)
    assert not failed.ok


def test_a_stable_version_that_failed_here_is_skipped_for_the_older_one() -> None:
    releases = [
        _rel("1.0.0"),
        _rel("1.1.0"),
    ]
    choice = choose_release(releases, "m", "dev-1", "9.9.9", failed_versions=["1.1.0"])
    assert choice.release is not None and choice.release.version == "1.0.0"
    assert ("1.1.0", "failed its checks on this device before") in choice.refused
    releases.append(_rel("1.2.0"))
    newer = choose_release(releases, "m", "dev-1", "9.9.9", failed_versions=["1.1.0"])
    assert newer.release is not None and newer.release.version == "1.2.0"
