"""A staged rollout end to end with real processes: cohorts, auto-advance, canary abort."""

from __future__ import annotations

from tests.fleet.conftest import Rig, device_ids, wait_for


def test_first_install_then_only_the_cohort_takes_a_staged_version(rig: Rig) -> None:
    inside = device_ids(5, 1, inside=True)
    outside = device_ids(5, 2, inside=False)
    devices = [rig.device(d) for d in inside + outside]
    for d in devices:
        d.run_once()
        assert d.active_version() == "1.0.0"
        assert d.node_model()["version"] == "1.0.0"
    rig.publish("1.1.0")
    rig.rollout("1.1.0", 5, auto=False)
    for d in devices:
        d.run_once()
        d.run_once()
    assert devices[0].active_version() == "1.1.0"
    assert devices[0].node_model()["version"] == "1.1.0"
    for d in devices[1:]:
        assert d.active_version() == "1.0.0"
        assert d.node_model()["version"] == "1.0.0"
        # never downloaded: no slot holds the staged version
        assert all(s["version"] != "1.1.0" for s in d.state()["slots"].values())


def test_gates_hold_so_the_controller_walks_to_100_percent(rig: Rig) -> None:
    devices = [rig.device(d) for d in device_ids(50, 2, True) + device_ids(50, 2, False)]
    for d in devices:
        d.run_once()
    rig.publish("1.1.0")
    rig.rollout("1.1.0", 50, stages=[50, 100], soak_s=0, min_reports=1)
    for d in devices:
        d.run_once()
    wait_for(lambda: rig.release("1.1.0")["percent"] == 100, what="advance to 100%")
    for d in devices:
        d.run_once()
    wait_for(lambda: rig.release("1.1.0")["stage"] == "stable", what="rollout complete")
    for d in devices:
        assert d.active_version() == "1.1.0"
        assert d.node_model()["version"] == "1.1.0"


def test_bad_canary_metrics_abort_and_every_device_returns(rig: Rig) -> None:
    devices = [rig.device(d) for d in device_ids(50, 2, True) + device_ids(50, 2, False)]
    for d in devices:
        d.run_once()
    rig.publish("1.1.0", behaviour="slow")  # passes the local checks, fails the fleet gate
    rig.rollout("1.1.0", 50, stages=[50, 100], soak_s=0, min_reports=1, gates={"max_p95_ms": 200})
    devices[0].run_once()
    assert devices[0].active_version() == "1.1.0"
    rel = wait_for(lambda: (r := rig.release("1.1.0"))["stage"] == "aborted" and r, what="abort")
    assert "p95_ms" in rel["reason"]
    for d in devices:
        d.run_once()
        assert d.active_version() == "1.0.0"
        assert d.node_model()["version"] == "1.0.0"


def test_a_model_the_node_refuses_is_rolled_back_by_the_device_and_aborts(rig: Rig) -> None:
    d = rig.device(device_ids(50, 1, True)[0])
    d.run_once()
    rig.publish("1.1.0", data=b"not a model at all" * 100)
    rig.rollout("1.1.0", 50, stages=[50, 100], soak_s=0)
    d.run_once()
    assert d.active_version() == "1.0.0"
    assert d.node_model()["version"] == "1.0.0"
    assert "1.1.0" in d.state()["failed_versions"]
    ev = wait_for(lambda: rig.events(d.id, "rolled_back"), what="rolled_back event")
    assert "node_refused_model" in ev[0]["reason"]
    wait_for(lambda: rig.release("1.1.0")["stage"] == "aborted", what="abort")
