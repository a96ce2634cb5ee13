"""The fleet server's /metrics against a real server process: counters move with reports and
controller steps, gauges describe the fleet at scrape time. Devices are simulated by posting
reports (the server is what is under test here)."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edgecloud.fleet.metrics import refusal_reason
from edgecloud.fleet.state import DeviceReport, FleetStore
from tests.fleet.conftest import MODEL, OPERATOR_AUTH, Rig, device_ids, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    r = httpx.get(f"{url}/metrics", headers=OPERATOR_AUTH, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


_credentials: dict[tuple[str, str], str] = {}


def auth(rig: Rig, device: str) -> dict[str, str]:
    key = (rig.url, device)
    if key not in _credentials:
        _credentials[key] = rig.credential(device)
    return {"authorization": f"Bearer {_credentials[key]}"}


def report(rig: Rig, device: str, version: str, **extra: object) -> None:
    body = {"device_id": device, "model": MODEL, "version": version, **extra}
    r = httpx.post(f"{rig.url}/v1/devices/report", json=body, headers=auth(rig, device), timeout=10)
    assert r.status_code == 204, r.text


def test_refusal_reasons_are_bounded_codes() -> None:
    assert refusal_reason("metadata_expired: timestamp.json is expired") == "metadata_expired"
    assert refusal_reason("target_too_long") == "target_too_long"
    assert refusal_reason("needs agent >= 2.0.0") == "agent_too_old"
    assert refusal_reason("failed its checks on this device before") == "failed_before"
    assert refusal_reason("Some Free Text {with: junk}") == "other"


def test_count_devices_by_model_and_version(tmp_path: Path) -> None:
    reports = [
        DeviceReport(device_id="a", model="m", version="1.0.0"),
        DeviceReport(device_id="b", model="m", version="1.0.0"),
        DeviceReport(device_id="c", model="m", version="1.1.0"),
        DeviceReport(device_id="d", model="m", version=""),  # nothing installed yet
    ]
    store = FleetStore(f"sqlite:///{tmp_path / 'fleet.db'}")
    store.save(reports)
    assert store.devices_by_version() == {("m", "1.0.0"): 2, ("m", "1.1.0"): 1}
    store.close()


def test_metrics_follow_reports_and_an_aborted_rollout(rig: Rig) -> None:
    url = rig.url
    first = scrape(url)
    assert value(first, "edgecloud_fleet_reports_total") == 0
    assert value(first, "edgecloud_fleet_rollouts_aborted_total", model=MODEL) == 0
    assert (
        value(first, "edgecloud_fleet_release_stage", model=MODEL, version="1.0.0", stage="stable")
        == 1
    )
    assert value(first, "process_resident_memory_bytes") is not None

    canary = device_ids(50, 1, True)[0]
    others = device_ids(50, 2, False)
    for d in [canary, *others]:
        report(rig, d, "1.0.0")
    refused = {"kind": "refused", "version": "1.1.0", "reason": "metadata_expired: too old"}
    report(rig, others[0], "1.0.0", events=[refused])
    s = scrape(url)
    assert value(s, "edgecloud_fleet_reports_total") == 4
    assert value(s, "edgecloud_fleet_devices", model=MODEL, version="1.0.0") == 3
    assert value(s, "edgecloud_fleet_agent_refusals_total", reason="metadata_expired") == 1
    assert value(s, "edgecloud_fleet_device_events_total", kind="refused") == 1
    assert value(s, "edgecloud_fleet_requests_total", route="report", status="204") == 4
    assert httpx.get(f"{url}/nowhere", timeout=10).status_code == 404
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401  # operator only
    bad = httpx.post(
        f"{url}/v1/devices/report", content=b"{", headers=auth(rig, canary), timeout=10
    )
    assert bad.status_code == 422
    s = scrape(url)
    assert value(s, "edgecloud_fleet_requests_total", route="other", status="404") == 1
    assert value(s, "edgecloud_fleet_requests_total", route="report", status="422") == 1
    assert value(s, "edgecloud_fleet_reports_total") == 4  # a refused report is not counted

    # a staged version: percent and gate values while it holds, then an abort
    rig.publish("1.1.0")
    rig.rollout("1.1.0", 50, stages=[50, 100], soak_s=3600, gates={"max_error_rate": 0.1})
    report(rig, canary, "1.1.0", metrics={"error_rate": 0.0})
    s = wait_for(
        lambda: (
            (s := scrape(url))
            and value(s, "edgecloud_fleet_gate_value", model=MODEL, version="1.1.0", gate="reports")
            == 1
            and s
        ),
        what="gate values of the staged version",
    )
    assert value(s, "edgecloud_fleet_rollout_percent", model=MODEL, version="1.1.0") == 50
    assert (
        value(s, "edgecloud_fleet_gate_value", model=MODEL, version="1.1.0", gate="error_rate") == 0
    )
    assert value(s, "edgecloud_fleet_devices", model=MODEL, version="1.1.0") == 1
    assert value(s, "edgecloud_fleet_devices", model=MODEL, version="1.0.0") == 2
    assert (value(s, "edgecloud_fleet_controller_last_run_timestamp_seconds") or 0) > 0

    report(rig, canary, "1.1.0", metrics={"error_rate": 0.9})
    s = wait_for(
        lambda: (
            (s := scrape(url))
            and value(s, "edgecloud_fleet_rollouts_aborted_total", model=MODEL) == 1
            and s
        ),
        what="the abort counted",
    )
    assert value(s, "edgecloud_fleet_rollout_steps_total", model=MODEL, action="abort") == 1
    assert (
        value(s, "edgecloud_fleet_release_stage", model=MODEL, version="1.1.0", stage="aborted")
        == 1
    )
    # the aborted version is no longer staged: its percent and gate series are gone
    assert value(s, "edgecloud_fleet_rollout_percent", model=MODEL, version="1.1.0") is None
    assert not any(name == "edgecloud_fleet_gate_value" for name, _ in s)
