"""One device must not steer a fleet: a failure claim from outside a stage's cohort is not
counted, and anonymous enrolment garbage cannot use up the fleet-wide enrolment limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.fleet.repository import ModelRepository
from edgecloud.fleet.rollout import DeviceReading, Gates, RolloutPlan, evaluate_gates
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from tests.fleet.conftest import MODEL, OPERATOR, OPERATOR_AUTH, device_ids, enrol_device, wait_for
from tests.fleet.standin_node import dummy_model


def test_failures_gate_is_a_fraction_of_the_stage_with_a_floor() -> None:
    gates = Gates(max_failures=0, max_failure_fraction=0.01)
    one_failed = [DeviceReading("d0", "2", failed=True)]
    # a 20-device stage: the floor (0) holds, one failure aborts (fail safe)
    assert not evaluate_gates(gates, "2", one_failed, stage_devices=20).ok
    # 5% of 100,000 devices: 50 may fail before the gate trips; the 51st trips it
    fifty = [DeviceReading(f"d{i}", "2", failed=True) for i in range(50)]
    assert evaluate_gates(gates, "2", fifty, stage_devices=5000).ok
    more = [*fifty, DeviceReading("d50", "2", failed=True)]
    r = evaluate_gates(gates, "2", more, stage_devices=5000)
    assert not r.ok and r.failures == ["failures 51 > 50"]
    assert Gates(max_failures=3, max_failure_fraction=0.0).failures_allowed(10**6) == 3


def _serve(tmp: Path, repo: Path, *args: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(
        edgecloud_command(
            "fleet", "serve", "--repo", str(repo), "--port", str(port), "--tick", "0.2", *args
        ),
        f"{url}/readyz",
        env={"EDGECLOUD_FLEET_TOKEN": OPERATOR},
        log_path=str(tmp / f"server-{port}.log"),
    )
    return proc, url


@pytest.fixture
def staged(tmp_path: Path) -> Iterator[str]:
    """tiny 1.1.0 staged at 5% of a fleet; gates wait for 2 devices and never soak out."""
    repo = ModelRepository.init(tmp_path / "repo")
    for version, stable in (("1.0.0", True), ("1.1.0", False)):
        f = tmp_path / f"{version}.gguf"
        f.write_bytes(dummy_model(version))
        repo.add_model(f, MODEL, version, stable=stable)
    plan = RolloutPlan(stages=[5, 25, 100], soak_s=3600, min_reports=2, gates=Gates())
    repo.start_rollout(MODEL, "1.1.0", 5, plan)
    proc, url = _serve(tmp_path, tmp_path / "repo", "--report-rate", "100")
    with proc:
        yield url


def _report(url: str, device: str, version: str, failed: list[str] | None = None) -> None:
    body: dict[str, Any] = {
        "device_id": device,
        "model": MODEL,
        "version": version,
        "metrics": {"error_rate": 0.0, "p95_ms": 50, "eval_score": 1.0},
        "failed_versions": failed or [],
    }
    cred = enrol_device(url, device)
    r = httpx.post(
        f"{url}/v1/devices/report",
        json=body,
        headers={"authorization": f"Bearer {cred}"},
        timeout=10,
    )
    assert r.status_code == 204, r.text


def _release(url: str) -> dict[str, Any]:
    status = httpx.get(f"{url}/v1/fleet/status", headers=OPERATOR_AUTH, timeout=10).json()
    return dict(next(r for r in status["releases"] if r["version"] == "1.1.0"))


def test_a_device_outside_the_cohort_cannot_abort_a_rollout(staged: str) -> None:
    url = staged
    outsider = device_ids(5, 1, inside=False)[0]
    insider = device_ids(5, 2, inside=True)
    _report(url, outsider, "1.0.0", failed=["1.1.0"])  # the attack: a claim it never earned
    _report(url, insider[0], "1.1.0")
    # the controller has judged a snapshot holding both reports once it counts the insider
    rel = wait_for(
        lambda: (r := _release(url))["gates"] and r["gates"]["values"]["reports"] == 1 and r,
        what="the controller to count the insider",
    )
    assert rel["stage"] == "staged"
    assert rel["gates"]["values"]["failures"] == 0
    # a device the stage did send the version to still aborts it at once (fail safe)
    _report(url, insider[1], "1.0.0", failed=["1.1.0"])
    aborted = wait_for(lambda: (r := _release(url))["stage"] == "aborted" and r, what="abort")
    assert "failures 1 > 0" in aborted["reason"]


def _enrol(c: httpx.Client, token: str, device_id: str) -> httpx.Response:
    return c.post(
        "/v1/devices/enrol",
        json={"device_id": device_id},
        headers={"authorization": f"Bearer {token}"},
    )


def test_enrolment_garbage_does_not_use_up_the_fleet_limit(tmp_path: Path) -> None:
    repo = ModelRepository.init(tmp_path / "repo")
    del repo
    # fleet-wide: 1 enrolment/s (a burst of 5); per address: generous, to isolate the bucket
    proc, url = _serve(
        tmp_path, tmp_path / "repo", "--enrol-rate", "1", "--enrol-rate-per-address", "1000"
    )
    with proc, httpx.Client(base_url=url, timeout=10) as c:
        token = c.post(
            "/v1/fleet/enrolment-tokens", json={"device_id": "real-1"}, headers=OPERATOR_AUTH
        ).json()["token"]
        garbage = [
            _enrol(c, t, "x") for t in ["enr_0123.nope", "junk", "enr_ffff." + "a" * 40] * 20
        ]
        assert {r.status_code for r in garbage} == {401}
        # the real device, in the middle of the flood, is not told to come back later
        assert _enrol(c, token, "real-1").status_code == 200


def test_enrolment_attempts_are_limited_per_source_address(tmp_path: Path) -> None:
    ModelRepository.init(tmp_path / "repo")
    proc, url = _serve(tmp_path, tmp_path / "repo", "--enrol-rate-per-address", "1")
    flooder = httpx.Client(base_url=url, timeout=10)
    # another box: loopback answers on all of 127/8, so bind the client to 127.0.0.2
    other = httpx.Client(
        base_url=url, timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )
    with proc, flooder, other:
        codes = [_enrol(flooder, "junk", "x").status_code for _ in range(20)]
        assert codes[0] == 401 and codes[-1] == 429  # a burst of 5 s, then told to wait
        limited = _enrol(flooder, "junk", "x")
        assert int(limited.headers["retry-after"]) >= 1
        token = other.post(
            "/v1/fleet/enrolment-tokens", json={"device_id": "real-2"}, headers=OPERATOR_AUTH
        ).json()["token"]
        assert _enrol(other, token, "real-2").status_code == 200
