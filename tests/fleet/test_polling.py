"""Polling and rollouts at fleet scale: jittered intervals, the server's next-poll hint (a
fleet-wide interval, stretched when writes lag), and rollout stages ramped at a rate of
devices per minute."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx

from edgecloud.fleet.polling import (
    DEFAULT_POLL_S,
    MAX_SHED_FACTOR,
    NEXT_POLL_HEADER,
    accept_hint,
    jittered,
    next_poll_hint,
)
from edgecloud.fleet.repository import ModelRepository
from edgecloud.fleet.rollout import (
    CUSTOM_KEY,
    RAMP_STEP_S,
    GateResult,
    Gates,
    ModelRelease,
    RolloutPlan,
    RolloutState,
    next_step,
)
from edgecloud.fleet.server import FleetServer, ServerConfig


def test_waits_are_spread_by_the_jitter() -> None:
    rng = random.Random(7)
    waits = [jittered(1800, 0.2, rng) for _ in range(1000)]
    assert 1440 <= min(waits) and max(waits) <= 2160
    assert max(waits) - min(waits) > 600  # spread, not one value


def test_the_server_hint_is_the_fleet_interval_stretched_under_load() -> None:
    assert next_poll_hint(None, write_lag_s=0.01, target_lag_s=1.0) is None
    assert next_poll_hint(3600, write_lag_s=0.01, target_lag_s=1.0) == 3600
    assert next_poll_hint(None, write_lag_s=3.0, target_lag_s=1.0) == 3 * DEFAULT_POLL_S
    assert next_poll_hint(600, write_lag_s=100.0, target_lag_s=1.0) == 600 * MAX_SHED_FACTOR
    assert accept_hint("120") == 120
    assert accept_hint("0") == 1 and accept_hint("1e12") == 86400
    assert accept_hint("soon") is None and accept_hint(None) is None and accept_hint("nan") is None


def test_a_report_answer_tells_the_device_when_to_come_back(tmp_path: Path) -> None:
    ModelRepository.init(tmp_path / "repo")
    config = ServerConfig(
        repo=tmp_path / "repo",
        db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        insecure=True,
        poll_interval_s=3600,
    )
    server = FleetServer(config)

    async def scenario() -> httpx.Response:
        await server._startup()
        try:
            transport = httpx.ASGITransport(app=server)
            async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as c:
                return await c.post("/v1/devices/report", json={"device_id": "d1"})
        finally:
            await server._shutdown()

    r = asyncio.run(scenario())
    assert r.status_code == 204 and r.headers[NEXT_POLL_HEADER] == "3600"


def test_a_rate_limited_rollout_ramps_between_stages() -> None:
    ok = GateResult(True, {}, [], reports=10)
    plan = RolloutPlan(stages=[5, 25, 100], soak_s=600, min_reports=1, max_devices_per_minute=100)
    fleet = 10_000  # 100 devices per minute is 1% of the fleet per minute
    state = RolloutState(stage="staged", percent=5, plan=plan, stage_started_at=0)
    assert next_step(state, ok, 599, fleet).action == "hold"  # the stage soaks first
    step = next_step(state, ok, 600, fleet)
    assert (step.action, step.percent) == ("advance", 6)
    ramp = state.model_copy(update={"percent": 6.0, "stage_started_at": 600})
    assert next_step(ramp, ok, 600 + RAMP_STEP_S - 1, fleet).action == "hold"  # no soak, a step
    assert next_step(ramp, ok, 600 + RAMP_STEP_S, fleet).percent == 7
    near = ramp.model_copy(update={"percent": 24.5})
    assert next_step(near, ok, 600 + RAMP_STEP_S, fleet).percent == 25  # never past the stage
    # unknown fleet size: stage to stage as before
    assert next_step(state, ok, 600, 0).percent == 25


def test_newer_plan_fields_stay_out_of_signed_metadata_at_their_defaults() -> None:
    def custom(plan: RolloutPlan) -> dict[str, object]:
        rel = ModelRelease(
            model="m",
            version="1.0.0",
            size=1,
            sha256="0" * 64,
            rollout=RolloutState(stage="staged", percent=5, plan=plan),
        )
        data = rel.to_custom()
        assert ModelRelease.from_custom(data) == rel  # round trip
        return dict(json.loads(data[CUSTOM_KEY])["rollout"]["plan"])

    plain = custom(RolloutPlan())
    assert "max_devices_per_minute" not in plain and "max_failure_fraction" not in plain["gates"]
    set_ = custom(RolloutPlan(max_devices_per_minute=50, gates=Gates(max_failure_fraction=0.05)))
    assert set_["max_devices_per_minute"] == 50 and set_["gates"]["max_failure_fraction"] == 0.05


def test_the_agent_waits_its_jittered_interval_and_never_less_than_asked(tmp_path: Path) -> None:
    from edgecloud.fleet.agent import Agent, AgentConfig

    agent = Agent(
        AgentConfig(
            server="http://127.0.0.1:9",
            models_dir=tmp_path / "models",
            node="http://127.0.0.1:9",
            model="m",
        )
    )
    try:
        assert agent.config.interval_s == DEFAULT_POLL_S
        waits = [agent.next_wait_s() for _ in range(200)]
        assert 0.8 * DEFAULT_POLL_S <= min(waits) and max(waits) <= 1.2 * DEFAULT_POLL_S
        agent.server_wait_s = 4 * DEFAULT_POLL_S  # the server sheds load
        assert min(agent.next_wait_s() for _ in range(200)) >= 0.8 * 4 * DEFAULT_POLL_S
    finally:
        agent.http.close()
        agent.node.close()
