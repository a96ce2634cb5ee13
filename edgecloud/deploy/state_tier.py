"""The gateway's shared state on Kubernetes: a Redis StatefulSet, or an external URL from a
Secret, and what the gateway's config and environment need to use it."""

from __future__ import annotations

from typing import Any

from edgecloud.deploy.values import Values
from edgecloud.deploy.workloads import container_security, labels, meta, name, resources, selector

Obj = dict[str, Any]
REDIS_UID = 999  # the redis user of the official alpine image


def redis_objects(values: Values) -> list[Obj]:
    """A one-replica Redis with an append-only file on a volume: the month's spend survives a
    restart of Redis, not only of the gateways."""
    st = values.gateway.state
    if st.redis != "in_cluster":
        return []
    main: Obj = {
        "name": "redis",
        "image": st.image.ref,
        "imagePullPolicy": st.image.pull_policy,
        "args": ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", "/data",
                 "--save", "", "--protected-mode", "no"],
        "ports": [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}],
        "resources": resources(st.resources),
        "securityContext": container_security(REDIS_UID),
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(values, "redis"),
        "spec": {
            "serviceName": name(values, "redis"),
            "replicas": 1,
            "selector": {"matchLabels": selector(values, "redis")},
            "template": {
                "metadata": {"labels": labels(values, "redis")},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "fsGroup": REDIS_UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "automountServiceAccountToken": False,
                    "containers": [main],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": st.storage}}},
            }],
        },
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(values, "redis"),
        "spec": {
            "selector": selector(values, "redis"),
            "ports": [{"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}],
        },
    }
    return [sts, svc]
