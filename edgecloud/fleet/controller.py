"""The rollout controller: advances staged releases while their gates hold, aborts otherwise.

The decision is the pure `next_step`; this module gathers each stage's sample from the
database (every server process's reports), applies the step to the signed repository (under
its lock), re-signs the timestamp before it expires, and stores every release's rollout state
and gate values in the database, where any server process reads them for `fleet status`.
Only the process holding the controller lease (`lease.py`) calls it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.fleet.repository import ModelRepository, repo_lock
from edgecloud.fleet.rollout import RolloutPlan, judge_stage, next_step
from edgecloud.fleet.state import FleetStore, StoredRollout
from edgecloud.logs import log_event

log = logging.getLogger("edgecloud.fleet")


@dataclass
class ControllerView:
    """The last evaluation of each staged release, for metrics."""

    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_tick: float = 0.0


@dataclass(frozen=True)
class ControlPass:
    """What one pass did: the steps taken, and whether the signed metadata changed."""

    steps: list[dict[str, Any]]
    resigned: bool


def control_once(
    repo_path: Path,
    keys_dir: Path | None,
    store: FleetStore,
    view: ControllerView,
    env: Mapping[str, str] | None = None,
) -> ControlPass:
    """One controller pass (blocking I/O: run it in a thread)."""
    taken: list[dict[str, Any]] = []
    states: list[StoredRollout] = []
    with repo_lock(repo_path):
        repo = ModelRepository(repo_path, keys_dir, env)
        now = time.time()
        for release in repo.releases():
            gate_view: dict[str, Any] | None = None
            if release.rollout.stage == "staged":
                plan = release.rollout.plan or RolloutPlan()
                sample, stage_devices = store.stage_sample(release)
                gates = judge_stage(plan.gates, sample, plan.min_reports, stage_devices)
                fleet = store.model_devices(release.model) if plan.max_devices_per_minute else 0
                step = next_step(release.rollout, gates, now, fleet)
                gate_view = {
                    "percent": release.rollout.percent,
                    "values": gates.values,
                    "failures": gates.failures,
                    "step": step.action,
                    "reason": step.reason,
                }
                view.gates[f"{release.model} {release.version}"] = gate_view
                if step.action != "hold":
                    release = repo.apply_step(release.model, release.version, step)
                    entry: dict[str, Any] = {
                        "model": release.model,
                        "version": release.version,
                        "action": step.action,
                        "percent": step.percent,
                        "reason": step.reason,
                    }
                    log_event(log, "rollout.step", **entry)
                    taken.append(entry)
            r = release.rollout
            states.append(
                StoredRollout(
                    release.model, release.version, r.stage, r.percent, r.reason, gate_view, now
                )
            )
        resigned = repo.refresh_timestamp()
        if resigned:
            log_event(log, "timestamp.refreshed")
        view.last_tick = now
    store.save_rollouts(states)
    return ControlPass(taken, resigned or bool(taken))
