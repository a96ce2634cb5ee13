"""Prometheus files checked by Prometheus' own `promtool` (Debian package `prometheus`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edgecloud.deploy import metrics as m
from edgecloud.deploy.monitoring import RULES_FILE
from edgecloud.deploy.render import render, write_tree
from edgecloud.deploy.values import Values, parse_values

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install -y prometheus)",
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "extra", ["", "node: {engine: vllm}\nobservability: {slo: {ttft_p95_s: 0.3}}"]
)
def test_alert_rules_pass_promtool(tmp_path: Path, extra: str) -> None:
    write_tree(render(parse_values(extra)), tmp_path)
    proc = _promtool("check", "rules", f"prometheus/{RULES_FILE}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    """Debian builds Prometheus without Kubernetes service discovery, so its promtool rejects
    `kubernetes_sd_configs`; everything else (relabelling regexes, rule files, intervals) is
    checked by swapping the discovery block for a static target."""
    write_tree(render(Values()), tmp_path)
    config = yaml.safe_load((tmp_path / "prometheus/prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    assert [j["job_name"] for j in jobs] == ["edgecloud", "edgecloud-fleet"]
    for job in jobs:
        assert job["kubernetes_sd_configs"] == [{"role": "pod",
                                                 "namespaces": {"names": ["edgecloud"]}}]
        job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    # The fleet job reads the operator token from the Secret mounted into Prometheus' pod;
    # promtool checks that the file exists, so the check points it at a file of its own.
    auth = jobs[1]["authorization"]
    assert auth["credentials_file"] == "/etc/prometheus/secrets/edgecloud-fleet-operator/token"
    token = tmp_path / "token"
    token.write_text("operator-token\n")
    auth["credentials_file"] = str(token)
    (tmp_path / "prometheus/static.yml").write_text(yaml.safe_dump(config))
    proc = _promtool("check", "config", "static.yml", cwd=tmp_path / "prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def test_alerts_fire_on_the_conditions_they_name(tmp_path: Path) -> None:
    """promtool's rule unit tests: synthetic series in, the expected alerts out."""
    write_tree(render(Values()), tmp_path)
    pod = 'namespace="edgecloud",pod="edgecloud-node-1",component="node"'
    gw = 'namespace="edgecloud",pod="edgecloud-gateway-1",component="gateway"'
    tests = {
        "rule_files": [RULES_FILE],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # 12 queued for 10 minutes on one node (threshold 8).
                _series(m.NODE_QUEUE_DEPTH.name, pod, "12x10"),
                # 10% of gateway requests are 5xx (SLO 2%).
                _series(m.GATEWAY_REQUESTS.name,
                        gw + ',placement="cloud",endpoint="cloud-node",reason="cost",status="200"',
                        "0+90x10"),
                _series(m.GATEWAY_REQUESTS.name,
                        gw + ',placement="cloud",endpoint="cloud-node",reason="cost",status="503"',
                        "0+10x10"),
                _series(m.GATEWAY_ENDPOINT_UP.name, gw + ',endpoint="edge-box",tier="edge"',
                        "0x10"),
                _series(m.FLEET_ROLLOUTS_ABORTED.name,
                        'namespace="edgecloud",component="fleet",model="gemma"', "0 0 0 1 1 1"),
                # The controller's last pass was at t=60 s and never again.
                _series(m.FLEET_CONTROLLER_LAST_RUN.name,
                        'namespace="edgecloud",component="fleet"', "60x20"),
            ],
            "alert_rule_test": [
                {"eval_time": "8m", "alertname": "EdgecloudNodeQueueDepth", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "app": "edgecloud",
                                    "pod": "edgecloud-node-1"},
                     "exp_annotations": {
                         "summary": "Requests queue on a model node",
                         "description": "edgecloud-node-1 has 12 queued requests."}}]},
                {"eval_time": "9m", "alertname": "EdgecloudGatewayErrorRate", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "app": "edgecloud"},
                     "exp_annotations": {
                         "summary": "Gateway 5xx rate above SLO",
                         "description": "More than 2.0% of gateway requests failed with a 5xx "
                                        "over 5m: 10%."}}]},
                {"eval_time": "5m", "alertname": "EdgecloudEndpointDown", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "app": "edgecloud",
                                    "namespace": "edgecloud", "pod": "edgecloud-gateway-1",
                                    "component": "gateway", "endpoint": "edge-box", "tier": "edge"},
                     "exp_annotations": {
                         "summary": "Gateway sees an endpoint down",
                         "description": "Endpoint edge-box fails its health checks."}}]},
                {"eval_time": "4m", "alertname": "EdgecloudFleetRolloutAborted", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "app": "edgecloud",
                                    "namespace": "edgecloud", "component": "fleet",
                                    "model": "gemma"},
                     "exp_annotations": {
                         "summary": "A fleet rollout aborted",
                         "description": "The rollout of gemma aborted: devices roll back to "
                                        "the previous version."}}]},
                {"eval_time": "15m", "alertname": "EdgecloudFleetControllerStalled",
                 "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "app": "edgecloud",
                                    "namespace": "edgecloud", "component": "fleet"},
                     "exp_annotations": {
                         "summary": "The fleet rollout controller stopped running",
                         "description": "No rollout controller pass for 14m 0s: staged "
                                        "rollouts neither advance nor abort."}}]},
                {"eval_time": "6m", "alertname": "EdgecloudFleetControllerStalled",
                 "exp_alerts": []},
                # Quiet where nothing is wrong.
                {"eval_time": "2m", "alertname": "EdgecloudNodeQueueDepth", "exp_alerts": []},
                {"eval_time": "2m", "alertname": "EdgecloudFleetRolloutAborted",
                 "exp_alerts": []},
            ],
        }],
    }
    test_file = tmp_path / "prometheus" / "rules.test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = _promtool("test", "rules", test_file.name, cwd=test_file.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
