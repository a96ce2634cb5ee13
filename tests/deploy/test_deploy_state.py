"""The gateway's shared state as `edgecloud deploy k8s` renders it."""

from __future__ import annotations

import pytest
import yaml

from edgecloud.deploy.errors import ValuesError
from edgecloud.deploy.render import kubernetes_objects, render
from edgecloud.deploy.values import parse_values
from edgecloud.gateway.config import parse_config


def _gateway(objs: dict[str, list[dict]]) -> dict:
    dep = next(o for o in objs["30-gateway.yaml"] if o["kind"] == "Deployment")
    return dep["spec"]["template"]["spec"]["containers"][0]


def test_default_renders_a_redis_and_points_the_gateway_at_it() -> None:
    values = parse_values("{}")
    objs = kubernetes_objects(values)
    kinds = sorted(o["kind"] for o in objs["25-redis.yaml"])
    assert kinds == ["Service", "StatefulSet"]
    sts = next(o for o in objs["25-redis.yaml"] if o["kind"] == "StatefulSet")
    assert "--appendonly" in sts["spec"]["template"]["spec"]["containers"][0]["args"]
    main = _gateway(objs)
    env = {e["name"]: e for e in main["env"]}
    assert env["EDGECLOUD_REDIS_URL"]["value"] == (
        "redis://edgecloud-redis.edgecloud.svc:6379/0")
    cm = next(o for o in objs["30-gateway.yaml"] if o["kind"] == "ConfigMap")
    cfg = parse_config(cm["data"]["gateway.yaml"])
    assert cfg.state.backend == "redis" and cfg.state.url_env == "EDGECLOUD_REDIS_URL"
    assert "--allow-anonymous" in main["args"]  # no keys, inside the cluster only


def test_external_redis_url_comes_from_a_secret() -> None:
    values = parse_values("gateway: {state: {redis: external, url_secret: managed-redis}}")
    objs = kubernetes_objects(values)
    assert "25-redis.yaml" not in objs
    env = {e["name"]: e for e in _gateway(objs)["env"]}
    assert env["EDGECLOUD_REDIS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "managed-redis", "key": "url"}}
    assert "redis://" not in "".join(render(values).values()).replace(
        "redis://[", "")  # the URL itself is never rendered
    with pytest.raises(ValuesError, match="url_secret"):
        parse_values("gateway: {state: {redis: external}}")


def test_no_shared_state_and_exposed_gateways_without_keys() -> None:
    objs = kubernetes_objects(parse_values("gateway: {state: {redis: none}}"))
    assert "25-redis.yaml" not in objs
    assert "EDGECLOUD_REDIS_URL" not in {e["name"] for e in _gateway(objs)["env"]}
    with pytest.raises(ValuesError, match="auth.keys"):
        kubernetes_objects(parse_values("gateway: {service_type: LoadBalancer}"))


def test_a_config_with_its_own_state_block_is_kept() -> None:
    text = yaml.safe_dump({"gateway": {"config": {
        "endpoints": [{"name": "hosted", "tier": "cloud", "url": "https://x.example/v1"}],
        "state": {"backend": "memory"}}}})
    cm = next(o for o in kubernetes_objects(parse_values(text))["30-gateway.yaml"]
              if o["kind"] == "ConfigMap")
    assert parse_config(cm["data"]["gateway.yaml"]).state.backend == "memory"
