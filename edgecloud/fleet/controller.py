"""The rollout controller: advances staged releases while their gates hold, aborts otherwise.

The decision is the pure `next_step`; this module only gathers readings and applies the step
to the signed repository (under its lock), then re-signs the timestamp before it expires.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.fleet.events import log_event
from edgecloud.fleet.repository import ModelRepository, repo_lock
from edgecloud.fleet.rollout import RolloutPlan, evaluate_gates, next_step
from edgecloud.fleet.state import DeviceReport, readings_for


@dataclass
class ControllerView:
    """The last evaluation of each staged release, for `fleet status`."""

    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_tick: float = 0.0


def control_once(
    repo_path: Path,
    keys_dir: Path | None,
    reports: Iterable[DeviceReport],
    view: ControllerView,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One controller pass (blocking I/O: run it in a thread). Returns the steps taken."""
    taken: list[dict[str, Any]] = []
    snapshot = list(reports)
    with repo_lock(repo_path):
        repo = ModelRepository(repo_path, keys_dir, env)
        now = time.time()
        for release in repo.releases():
            if release.rollout.stage != "staged":
                continue
            plan = release.rollout.plan or RolloutPlan()
            readings, stage_devices = readings_for(snapshot, release)
            gates = evaluate_gates(
                plan.gates,
                release.version,
                readings,
                quorum=plan.min_reports,
                stage_devices=stage_devices,
            )
            step = next_step(release.rollout, gates, now)
            key = f"{release.model} {release.version}"
            view.gates[key] = {
                "percent": release.rollout.percent,
                "values": gates.values,
                "failures": gates.failures,
                "step": step.action,
                "reason": step.reason,
            }
            if step.action != "hold":
                repo.apply_step(release.model, release.version, step)
                entry: dict[str, Any] = {
                    "model": release.model,
                    "version": release.version,
                    "action": step.action,
                    "percent": step.percent,
                    "reason": step.reason,
                }
                log_event("rollout.step", **entry)
                taken.append(entry)
        if repo.refresh_timestamp():
            log_event("timestamp.refreshed")
        view.last_tick = now
    return taken
