"""kill -9 of the agent mid-download and mid-activation: the node keeps a verified model."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from edgecloud.fleet.repository import ModelRepository, repo_lock
from tests.fleet.conftest import Rig, wait_for
from tests.fleet.standin_node import dummy_model


def test_kill_during_download_then_resume(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(server_args=("--rate-limit", "150000"))
    d = rig.device("dev-a")
    d.run_once()
    rig.publish("1.1.0", data=dummy_model("1.1.0", size=450_000), stable=True)
    agent = d.start_agent()
    part = wait_for(
        lambda: [p for p in (d.models / "slot-b").glob("*.part") if p.stat().st_size > 50_000],
        what="a partial download",
    )[0]
    agent.kill()
    agent.proc.wait(5)  # type: ignore[union-attr]
    have = part.stat().st_size
    assert 0 < have < 450_000
    assert d.active_version() == "1.0.0"
    assert d.node_model()["version"] == "1.0.0"
    d.run_once()
    assert d.active_version() == "1.1.0"
    log = (d.dir / "agent.log").read_text()
    assert '"event":"download.resume"' in log


def test_kill_during_activation_leaves_a_verified_model(rig: Rig) -> None:
    d = rig.device("dev-a", load_delay=2.0)
    d.run_once()
    rig.publish("1.1.0", stable=True)
    agent = d.start_agent()
    wait_for(lambda: d.state().get("pending"), what="activation in progress")
    agent.kill()
    agent.proc.wait(5)  # type: ignore[union-attr]
    verified = {hashlib.sha256(b).hexdigest() for b in rig.files.values()}
    assert d.node_model()["sha256"] in verified
    # the operator pulls 1.1.0 while the box is down; on restart it recovers to 1.0.0
    with repo_lock(rig.repo_path):
        ModelRepository(rig.repo_path).rollback("tiny")
    d.run_once()
    state = d.state()
    assert state["pending"] is None
    assert d.active_version() == "1.0.0"
    assert d.node_model()["version"] == "1.0.0"
    assert d.node_model()["sha256"] == hashlib.sha256(rig.files["1.0.0"]).hexdigest()
    assert wait_for(lambda: rig.events(d.id, "recovered"), what="recovered event")


def test_a_version_that_crashes_the_node_while_loading_is_marked_failed(rig: Rig) -> None:
    """The node dies in the swap (no answer); its supervisor restarts it on the factory model.
    The agent restores the committed slot each time, and the second cut-short activation of the
    same version marks it failed: it is reported and never tried again."""
    d = rig.device("dev-a")
    d.run_once()
    assert d.active_version() == "1.0.0"
    rig.publish("1.1.0", data=dummy_model("1.1.0", behaviour="crash"), stable=True)

    def node_dies_and_restarts() -> None:
        assert not d.node.alive()
        assert d.state()["pending"]["version"] == "1.1.0"
        d.node.start()  # the supervisor's restart, on the factory model
        d.node.wait_ready(30)

    d.run_once()  # tries 1.1.0: the node dies in the swap
    node_dies_and_restarts()
    d.run_once()  # restores 1.0.0 (one cut-short activation), tries 1.1.0 again: dies
    assert d.state()["interrupted"] == {"1.1.0": 1}
    node_dies_and_restarts()
    d.run_once()  # restores 1.0.0; the second cut-short activation marks 1.1.0 failed
    state = d.state()
    assert state["pending"] is None and state["interrupted"] == {}
    assert "1.1.0" in state["failed_versions"]
    assert d.node.alive() and d.active_version() == "1.0.0"
    assert d.node_model()["sha256"] == hashlib.sha256(rig.files["1.0.0"]).hexdigest()
    d.run_once()  # not tried a third time
    assert d.node.alive() and d.node_model()["version"] == "1.0.0"
    rolled = wait_for(lambda: rig.events(d.id, "rolled_back"), what="rolled_back event")
    assert rolled[0]["version"] == "1.1.0" and "cut short 2 times" in rolled[0]["reason"]
