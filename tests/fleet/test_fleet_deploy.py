"""How `edgecloud deploy k8s` renders the fleet API: stateless replicas with a disruption
budget, the database URL only through the environment, and the mirror/CDN settings."""

from __future__ import annotations

from typing import Any

from edgecloud.deploy.render import kubernetes_objects
from edgecloud.deploy.values import parse_values


def _fleet(values: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for objs in kubernetes_objects(parse_values(values)).values():
        for o in objs:
            if o["metadata"]["name"].endswith("-fleet") or o["metadata"]["name"].endswith(
                "-fleet-repo"
            ):
                out.setdefault(o["kind"], []).append(o)
    return out


def test_the_fleet_api_runs_as_replicas_with_a_disruption_budget() -> None:
    objs = _fleet("fleet: {operator_token_secret: fleet-op}")
    (dep,) = objs["Deployment"]
    assert dep["spec"]["replicas"] >= 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    (pdb,) = objs["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (pvc,) = objs["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # any replica may lead
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["edgecloud.io/controller-lease"] == "postgresql-advisory-lock"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    # the database URL (password included) only through the environment, from a Secret
    assert "--db" not in c["args"] and c["args"][c["args"].index("--db-env") + 1] == (
        "EDGECLOUD_FLEET_DB"
    )
    assert not any("EDGECLOUD_FLEET_DB)" in a for a in c["args"])
    db = next(e for e in c["env"] if e["name"] == "EDGECLOUD_FLEET_DB")
    assert db["valueFrom"]["secretKeyRef"]["name"] == "edgecloud-fleet-db"


def test_one_replica_keeps_a_single_writer() -> None:
    objs = _fleet("fleet: {replicas: 1}")
    (dep,) = objs["Deployment"]
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert "PodDisruptionBudget" not in objs
    assert objs["PersistentVolumeClaim"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_the_mirror_and_poll_settings_reach_the_server() -> None:
    objs = _fleet(
        "fleet:\n"
        "  poll_interval_s: 1800\n"
        "  mirror: {url: 's3://models/fleet', endpoint_url: 'https://minio.example',"
        " credentials_secret: fleet-s3, timestamp_max_age_s: 30}\n"
    )
    (c,) = objs["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[args.index("--mirror") + 1] == "s3://models/fleet"
    assert args[args.index("--mirror-endpoint-url") + 1] == "https://minio.example"
    assert args[args.index("--timestamp-max-age") + 1] == "30"
    assert args[args.index("--poll-interval") + 1] == "1800"
    assert c["envFrom"] == [{"secretRef": {"name": "fleet-s3"}}]
