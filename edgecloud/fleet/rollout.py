"""Pure rollout logic: release metadata, which version a device runs, gates and stage steps.

No I/O here. The release metadata travels signed inside TUF targets metadata (the `custom`
field of each target), so an agent decides from signed data alone; the server's controller
uses the same functions to decide whether a rollout advances, holds or aborts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgecloud.fleet.cohort import in_cohort

CUSTOM_KEY = "edgecloud"
Stage = Literal["draft", "staged", "stable", "aborted"]


def parse_version(text: str) -> Version:
    """A release version (PEP 440 / semver-like X.Y.Z); ValueError when it is not one."""
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise ValueError(f"{text!r} is not a version like 1.2.3") from exc


class Gates(BaseModel):
    """Limits that devices on the new version must hold for a rollout to go on."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_p95_ms: float | None = Field(default=None, gt=0)
    min_eval_score: float | None = Field(default=0.5, ge=0, le=1)
    # Failures allowed: this fraction of the stage's devices, never fewer than `max_failures`.
    # At 5% of 100,000 devices one flaky box must not abort a release; at a 20-device stage
    # the floor (0 by default) still aborts on the first failure (fail safe).
    max_failures: int = Field(default=0, ge=0)
    max_failure_fraction: float = Field(default=0.01, ge=0, le=1)

    def failures_allowed(self, stage_devices: int) -> int:
        """How many devices of a stage of `stage_devices` may fail before the gate trips."""
        return max(self.max_failures, math.floor(self.max_failure_fraction * stage_devices))


class RolloutPlan(BaseModel):
    """How a staged version spreads: stages in percent, gates, soak time per stage."""

    model_config = ConfigDict(extra="forbid")

    stages: list[float] = Field(default_factory=lambda: [5.0, 25.0, 100.0])
    gates: Gates = Field(default_factory=lambda: Gates())
    soak_s: float = Field(default=60.0, ge=0)
    min_reports: int = Field(default=1, ge=0)  # quorum: distinct enrolled devices reporting
    auto: bool = True
    # At most this many more devices told to install per minute (Greengrass's rollout rate):
    # between stages the cohort grows a little each RAMP_STEP_S instead of all at once.
    max_devices_per_minute: float | None = Field(default=None, gt=0)

    @field_validator("stages")
    @classmethod
    def _increasing(cls, stages: list[float]) -> list[float]:
        if not stages or any(not 0 < s <= 100 for s in stages):
            raise ValueError("stages must be percentages in (0, 100]")
        if sorted(stages) != stages or len(set(stages)) != len(stages):
            raise ValueError("stages must increase, e.g. [5, 25, 100]")
        return stages


class RolloutState(BaseModel):
    """Where a release stands in its rollout."""

    model_config = ConfigDict(extra="forbid")

    stage: Stage = "draft"
    percent: float = Field(default=0.0, ge=0, le=100)
    plan: RolloutPlan | None = None
    stage_started_at: float = 0.0
    reason: str = ""


class ModelRelease(BaseModel):
    """The signed description of one model version (the target's custom metadata)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: str
    format: str = "gguf"
    size: int = Field(ge=0)
    sha256: str
    min_agent_version: str = "0.0.0"
    notes: str = ""
    published_at: float = 0.0
    rollout: RolloutState = Field(default_factory=lambda: RolloutState())

    @field_validator("version", "min_agent_version")
    @classmethod
    def _is_version(cls, text: str) -> str:
        parse_version(text)
        return text

    @property
    def key(self) -> tuple[str, Version]:
        return (self.model, parse_version(self.version))

    def to_custom(self) -> dict[str, Any]:
        # A JSON string: TUF's canonical JSON has no floats, and gates need them.
        data = self.model_dump(mode="json")
        plan = data["rollout"].get("plan")
        if plan is not None:  # agents before these fields reject unknown keys: omit defaults
            for key, default in _NEWER_PLAN_KEYS.items():
                if plan.get(key) == default:
                    del plan[key]
            for key, default in _NEWER_GATE_KEYS.items():
                if plan["gates"].get(key) == default:
                    del plan["gates"][key]
        return {CUSTOM_KEY: json.dumps(data, separators=(",", ":"))}

    @classmethod
    def from_custom(cls, custom: Any) -> ModelRelease | None:
        """The release in a target's custom field, or None for targets that are not models."""
        if not isinstance(custom, dict) or CUSTOM_KEY not in custom:
            return None
        return cls.model_validate_json(custom[CUSTOM_KEY])


# Fields added after agents were in the field; left out of the signed JSON at their defaults.
_NEWER_PLAN_KEYS: dict[str, Any] = {"max_devices_per_minute": None}
_NEWER_GATE_KEYS: dict[str, Any] = {"max_failure_fraction": 0.01}


def target_path(model: str, version: str) -> str:
    """The TUF target path of a model version."""
    return f"models/{model}/{version}/{model}-{version}.gguf"


def releases_of(releases: Iterable[ModelRelease], model: str) -> list[ModelRelease]:
    """The releases of one model, newest version first."""
    found = [r for r in releases if r.model == model]
    return sorted(found, key=lambda r: parse_version(r.version), reverse=True)


def stable_release(releases: Iterable[ModelRelease], model: str) -> ModelRelease | None:
    """The newest stable (fully rolled out, not aborted) release of a model."""
    for r in releases_of(releases, model):
        if r.rollout.stage == "stable":
            return r
    return None


def staged_release(releases: Iterable[ModelRelease], model: str) -> ModelRelease | None:
    """The release being rolled out, if any (at most one per model is staged)."""
    for r in releases_of(releases, model):
        if r.rollout.stage == "staged":
            return r
    return None


@dataclass(frozen=True)
class Choice:
    """The version a device should run, and why."""

    release: ModelRelease | None
    reason: str
    refused: list[tuple[str, str]] = field(default_factory=list)  # (version, reason)


def choose_release(
    releases: Sequence[ModelRelease],
    model: str,
    device_id: str,
    agent_version: str,
    failed_versions: Iterable[str] = (),
) -> Choice:
    """Pick the version `device_id` should run from signed release metadata.

    A staged version goes to devices inside its cohort; everyone else (and devices where that
    version already failed its checks) runs the newest stable one that has not failed here.
    """
    failed = set(failed_versions)
    refused: list[tuple[str, str]] = []
    agent = parse_version(agent_version)

    def compatible(r: ModelRelease) -> bool:
        if parse_version(r.min_agent_version) > agent:
            refused.append((r.version, f"needs agent >= {r.min_agent_version}"))
            return False
        return True

    staged = staged_release(releases, model)
    if staged is not None and in_cohort(device_id, model, staged.rollout.percent):
        if staged.version in failed:
            refused.append((staged.version, "failed its checks on this device before"))
        elif compatible(staged):
            return Choice(staged, f"in the {staged.rollout.percent:g}% cohort", refused)
    for r in releases_of(releases, model):
        if r.rollout.stage != "stable":
            continue
        if r.version in failed:  # never again on this device, until a newer one is published
            refused.append((r.version, "failed its checks on this device before"))
        elif compatible(r):
            return Choice(r, "stable", refused)
    return Choice(None, "no stable release for this device", refused)


def told_to_install(device_id: str, release: ModelRelease) -> bool:
    """Whether the current stage of a staged `release` sends it to `device_id`: only these
    devices' reports (health or failure) may move its gates."""
    return release.rollout.stage == "staged" and in_cohort(
        device_id, release.model, release.rollout.percent
    )


@dataclass(frozen=True)
class DeviceReading:
    """The last report of one device, as the gates see it."""

    device_id: str
    version: str
    error_rate: float = 0.0
    p95_ms: float | None = None
    eval_score: float | None = None
    failed: bool = False  # the device refused or rolled back this version


@dataclass(frozen=True)
class GateResult:
    ok: bool
    values: dict[str, float | int | None]
    failures: list[str]
    reports: int


@dataclass(frozen=True)
class StageSample:
    """What the gates judge: the stage's healthy devices on the version, aggregated, and its
    failures. Built from readings (`sample_readings`) or by the database in one query."""

    healthy: int = 0
    failures: int = 0
    mean_error_rate: float = 0.0
    worst_p95_ms: float | None = None
    mean_eval_score: float | None = None


def sample_readings(version: str, readings: Iterable[DeviceReading]) -> StageSample:
    """Aggregate readings of devices on `version`, one per device (its last)."""
    on = list({r.device_id: r for r in readings if r.version == version}.values())
    healthy = [r for r in on if not r.failed]
    p95s = [r.p95_ms for r in healthy if r.p95_ms is not None]
    scores = [r.eval_score for r in healthy if r.eval_score is not None]
    return StageSample(
        healthy=len(healthy),
        failures=len(on) - len(healthy),
        mean_error_rate=sum(r.error_rate for r in healthy) / len(healthy) if healthy else 0.0,
        worst_p95_ms=max(p95s) if p95s else None,
        mean_eval_score=sum(scores) / len(scores) if scores else None,
    )


def evaluate_gates(
    gates: Gates,
    version: str,
    readings: Iterable[DeviceReading],
    quorum: int = 1,
    stage_devices: int = 0,
) -> GateResult:
    """Aggregate the readings of devices on `version` and check them against the gates.

    `readings` must come only from devices told to install `version` in the current stage
    (see `told_to_install`): a device outside the cohort cannot vote.
    """
    return judge_stage(gates, sample_readings(version, readings), quorum, stage_devices)


def judge_stage(
    gates: Gates, sample: StageSample, quorum: int = 1, stage_devices: int = 0
) -> GateResult:
    """Check a stage's sample against the gates.

    Metric gates judge only once `quorum` distinct devices report healthy on the version, so
    one device cannot abort (or, with `next_step`, promote) a rollout by its numbers alone;
    failures count at once against `Gates.failures_allowed(stage_devices)` (fail safe at
    small stages).
    """
    allowed = gates.failures_allowed(stage_devices)
    values: dict[str, float | int | None] = {
        "failures": sample.failures,
        "failures_allowed": allowed,
        "stage_devices": stage_devices,
        "reports": sample.healthy,
    }
    failures: list[str] = []
    if sample.failures > allowed:
        failures.append(f"failures {sample.failures} > {allowed}")
    if sample.healthy and sample.healthy >= max(1, quorum):
        err = sample.mean_error_rate
        values["error_rate"] = round(err, 4)
        if err > gates.max_error_rate:
            failures.append(f"error_rate {err:.3f} > {gates.max_error_rate}")
        worst = sample.worst_p95_ms
        if worst is not None:
            values["p95_ms"] = round(worst, 1)
            if gates.max_p95_ms is not None and worst > gates.max_p95_ms:
                failures.append(f"p95_ms {worst:.0f} > {gates.max_p95_ms:g}")
        mean = sample.mean_eval_score
        if mean is not None:
            values["eval_score"] = round(mean, 3)
            if gates.min_eval_score is not None and mean < gates.min_eval_score:
                failures.append(f"eval_score {mean:.2f} < {gates.min_eval_score}")
    return GateResult(not failures, values, failures, sample.healthy)


Action = Literal["hold", "advance", "complete", "abort"]


@dataclass(frozen=True)
class Step:
    action: Action
    percent: float
    reason: str


RAMP_STEP_S = 60.0  # a rate-limited rollout re-signs its cohort at most this often


def next_step(state: RolloutState, gates: GateResult, now: float, fleet_devices: int = 0) -> Step:
    """What the controller does with a staged rollout: hold, advance, complete or abort.

    With `plan.max_devices_per_minute` and the model's `fleet_devices` known, an advance
    between stages goes in ramp steps (each RAMP_STEP_S, no soak between them) so that at
    most that many devices per minute are newly told to install; a stage soaks once reached.
    """
    plan = state.plan or RolloutPlan()
    if not gates.ok:
        return Step("abort", 0.0, "gates failed: " + "; ".join(gates.failures))
    if not plan.auto:
        return Step("hold", state.percent, "manual rollout")
    if gates.reports < plan.min_reports:
        return Step("hold", state.percent, f"waiting for a quorum of {plan.min_reports} devices")
    rate = plan.max_devices_per_minute if fleet_devices > 0 else None
    ramping = rate is not None and state.percent not in plan.stages and state.percent < 100
    since = now - state.stage_started_at
    if not ramping and since < plan.soak_s:
        return Step("hold", state.percent, "soaking")
    if state.percent >= 100:
        return Step("complete", 100.0, "gates held at 100%")
    nxt = next((s for s in plan.stages if s > state.percent), 100.0)
    if rate is None:
        return Step("advance", nxt, f"gates held at {state.percent:g}%")
    if ramping and since < RAMP_STEP_S:
        return Step("hold", state.percent, f"ramping to {nxt:g}% at {rate:g} devices/min")
    grow = 100.0 * rate * (RAMP_STEP_S / 60.0) / fleet_devices
    to = min(nxt, round(state.percent + grow, 4))
    return Step("advance", to, f"ramping to {nxt:g}% at {rate:g} devices/min")
