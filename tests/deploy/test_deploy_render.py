"""Rendered manifests: valid against the Kubernetes schemas (core objects) and the published
CRD models (KEDA, Prometheus Operator), with the values landing where they should."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from edgecloud.deploy import metrics
from edgecloud.deploy.errors import ValuesError
from edgecloud.deploy.render import kubernetes_objects, render
from edgecloud.deploy.values import Values, parse_values
from edgecloud.supervise import edgecloud_command

K8S_VERSION = "1.30"

VARIANTS = {
    "defaults": "",
    "hpa": "node: {autoscaling: {mode: hpa, target_inflight_per_pod: 2.5}}",
    "vllm-gpu": "node: {engine: vllm, gpus: 1, model: {pvc: models}}",
    "operator-tracing": "observability: {prometheus_operator: true, tracing: {enabled: true}}",
    "no-autoscaling": "node: {autoscaling: {mode: none}}\ngateway: {autoscaling: {enabled: false}}",
    "no-fleet": "fleet: {enabled: false}",
    "secrets": "gateway: {env_secret: upstream-keys}\nnode: {admin_token_secret: node-admin}\n"
               "fleet: {keys_secret: fleet-keys, operator_token_secret: fleet-op,"
               " tls_secret: fleet-tls}",
    "hosted-api": "node: {enabled: false}\ngateway: {env_secret: keys, config: {endpoints: "
                  "[{name: hosted, tier: cloud, url: 'https://api.example/v1', "
                  "api_key_env: CLOUD_API_KEY, region: eu-central-1}]}}",
}


def _objects(values: Values) -> list[dict[str, Any]]:
    return [o for objs in kubernetes_objects(values).values() for o in objs]


def _crd_model(obj: dict[str, Any]) -> Any:
    if obj["kind"] == "ScaledObject":
        from cloudcoil.models.keda.v1alpha1 import ScaledObject

        return ScaledObject
    from cloudcoil.models.prometheus_operator import v1

    return getattr(v1, obj["kind"])


def _validate_crd(obj: dict[str, Any]) -> None:
    """Validate against the model generated from the published CRD schema; a field the model
    does not know would be dropped on the round trip, so the round trip must be exact."""
    model = _crd_model(obj).model_validate(obj)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_is_valid(variant: str) -> None:
    values = parse_values(VARIANTS[variant])
    objs = _objects(values)
    assert objs
    for obj in objs:
        if obj["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/")):
            _validate_crd(obj)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_crd_check_catches_an_unknown_field() -> None:
    so = next(o for o in _objects(Values()) if o["kind"] == "ScaledObject")
    bad = {**so, "spec": {**so["spec"], "minReplicas": 3}}  # the HPA spelling, not KEDA's
    with pytest.raises(AssertionError):
        _validate_crd(bad)


def test_kubernetes_validator_catches_a_wrong_field() -> None:
    dep = next(o for o in _objects(Values()) if o["kind"] == "Deployment")
    bad = json.loads(json.dumps(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _by_kind(values: Values, kind: str, component: str) -> dict[str, Any]:
    return next(
        o for o in _objects(values)
        if o["kind"] == kind and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    )


SCALING = """
node:
  autoscaling:
    min_replicas: 3
    max_replicas: 21
    target_inflight_per_pod: 2.5
    polling_interval_s: 20
    scale_up: {stabilization_window_s: 7, period_s: 30, pods_per_period: 2,
               percent_per_period: 50, select_policy: Min}
    scale_down: {stabilization_window_s: 450, period_s: 90, pods_per_period: 1,
                 percent_per_period: null}
observability: {prometheus_url: "http://prom.example:9090"}
"""

EXPECTED_BEHAVIOR = {
    "scaleUp": {"stabilizationWindowSeconds": 7, "selectPolicy": "Min", "policies": [
        {"type": "Pods", "value": 2, "periodSeconds": 30},
        {"type": "Percent", "value": 50, "periodSeconds": 30}]},
    "scaleDown": {"stabilizationWindowSeconds": 450, "selectPolicy": "Max", "policies": [
        {"type": "Pods", "value": 1, "periodSeconds": 90}]},
}


def test_scaling_values_land_in_the_keda_scaled_object() -> None:
    values = parse_values(SCALING)
    so = _by_kind(values, "ScaledObject", "node")["spec"]
    assert (so["minReplicaCount"], so["maxReplicaCount"], so["pollingInterval"]) == (3, 21, 20)
    assert so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == EXPECTED_BEHAVIOR
    assert so["scaleTargetRef"]["name"] == "edgecloud-node"
    (trigger,) = so["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "2.5"
    assert trigger["metadata"]["serverAddress"] == "http://prom.example:9090"
    q = trigger["metadata"]["query"]
    assert q.startswith(f"sum({metrics.NODE_IN_FLIGHT.name}{{")
    assert not any(o["kind"] == "HorizontalPodAutoscaler"
                   and o["metadata"]["name"] == "edgecloud-node" for o in _objects(values))


def test_scaling_values_land_in_the_hpa_and_the_adapter_rule() -> None:
    values = parse_values(SCALING.replace("  autoscaling:\n", "  autoscaling:\n    mode: hpa\n"))
    hpa = _by_kind(values, "HorizontalPodAutoscaler", "node")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 21)
    assert hpa["behavior"] == EXPECTED_BEHAVIOR
    (metric,) = hpa["metrics"]
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "2500m"}
    rules = yaml.safe_load(render(values)["prometheus/adapter-rules.yaml"])["rules"]
    assert rules[0]["name"]["as"] == metric["pods"]["metric"]["name"]
    # The autoscaler owns the count: the Deployment must not fight it with a fixed one.
    assert "replicas" not in _by_kind(values, "Deployment", "node")["spec"]


def test_node_probes_resources_and_pdb() -> None:
    values = parse_values("node: {parallel: 6, resources: {limits: {cpu: '3', memory: 5Gi}}}")
    dep = _by_kind(values, "Deployment", "node")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["limits"] == {"cpu": "3", "memory": "5Gi"}
    assert c["args"][c["args"].index("--parallel") + 1] == "6"
    assert c["securityContext"]["runAsNonRoot"] is True
    pdb = _by_kind(values, "PodDisruptionBudget", "node")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    svc = _by_kind(values, "Service", "node")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_vllm_engine_uses_its_own_image_gpu_and_metrics() -> None:
    values = parse_values("node: {engine: vllm, gpus: 2}")
    (c,) = _by_kind(values, "Deployment", "node")["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("vllm/vllm-openai:")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    q = _by_kind(values, "ScaledObject", "node")["spec"]["triggers"][0]["metadata"]["query"]
    assert metrics.VLLM_RUNNING in q and metrics.VLLM_WAITING in q


def test_tracing_env_is_off_by_default_and_on_when_asked() -> None:
    def env(v: Values) -> dict[str, str]:
        (c,) = _by_kind(v, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value", "") for e in c["env"]}

    assert env(Values())["OTEL_SDK_DISABLED"] == "true"
    on = env(parse_values("observability: {tracing: {enabled: true, otlp_endpoint: 'http://c:4317'}}"))
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://c:4317"
    assert on["OTEL_SDK_DISABLED"] == "false"


def test_gateway_config_map_points_at_the_node_service() -> None:
    values = Values()
    cm = _by_kind(values, "ConfigMap", "gateway")
    config = yaml.safe_load(cm["data"]["gateway.yaml"])
    svc = _by_kind(values, "Service", "node")
    assert config["endpoints"][0]["url"] == (
        f"http://{svc['metadata']['name']}.{values.namespace}.svc:{values.node.port}/v1")
    dep = _by_kind(values, "Deployment", "gateway")
    assert "replicas" not in dep["spec"]  # the gateway HPA owns it
    assert dep["spec"]["template"]["spec"]["volumes"][1]["configMap"]["name"] == \
        cm["metadata"]["name"]


def test_hosted_api_instead_of_cluster_nodes() -> None:
    values = parse_values(VARIANTS["hosted-api"])
    assert not any(o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "node"
                   for o in _objects(values))
    cm = _by_kind(values, "ConfigMap", "gateway")
    assert yaml.safe_load(cm["data"]["gateway.yaml"])["endpoints"][0]["name"] == "hosted"
    with pytest.raises(ValuesError, match="gateway.config"):
        render(parse_values("node: {enabled: false}"))


def test_fleet_runs_with_postgres_and_no_secret_is_rendered() -> None:
    objs = _objects(Values())
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("StatefulSet", "edgecloud-postgres") in kinds
    assert ("Deployment", "edgecloud-fleet") in kinds
    assert not any(o["kind"] == "Secret" for o in objs)
    (c,) = _by_kind(Values(), "Deployment", "fleet")["spec"]["template"]["spec"]["containers"]
    assert c["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "edgecloud-fleet-db"


def test_cli_writes_the_tree(tmp_path: Path) -> None:
    vals = tmp_path / "v.yaml"
    vals.write_text("node: {autoscaling: {max_replicas: 9}}\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        edgecloud_command("deploy", "k8s", "--out", str(out), "--values", str(vals)),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"kubernetes/20-node.yaml", "prometheus/alert-rules.yaml",
            "grafana/edgecloud-dashboard.json", "values.yaml"} <= written
    docs = list(yaml.safe_load_all((out / "kubernetes/50-autoscaling.yaml").read_text()))
    assert docs[0]["spec"]["maxReplicaCount"] == 9
    json.loads((out / "grafana/edgecloud-dashboard.json").read_text())


def test_cli_reports_bad_values_with_the_line(tmp_path: Path) -> None:
    vals = tmp_path / "bad.yaml"
    vals.write_text("node:\n  autoscaling:\n    mode: sometimes\n")
    proc = subprocess.run(
        edgecloud_command("deploy", "k8s", "--out", str(tmp_path / "o"), "--values", str(vals)),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "bad.yaml:3" in proc.stdout and "node.autoscaling.mode" in proc.stdout


def test_cli_prints_the_defaults_it_renders_from() -> None:
    proc = subprocess.run(edgecloud_command("deploy", "k8s", "--print-defaults"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert parse_values(proc.stdout) == Values()
    proc = subprocess.run(edgecloud_command("deploy", "k8s"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--out" in proc.stderr
