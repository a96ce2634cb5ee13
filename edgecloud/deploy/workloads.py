"""Kubernetes objects for the gateway and the cloud model nodes, and the shared builders.

Plain functions from `Values` to dicts (dumped as YAML by `render`), so every object can be
checked against the Kubernetes schemas and every value traced to where it lands.
"""

from __future__ import annotations

import hashlib
from typing import Any

from edgecloud.deploy.errors import ValuesError
from edgecloud.deploy.values import Image, Resources, Values
from edgecloud.gateway.config import (
    DEFAULT_DETECT,
    EndpointConfig,
    GatewayConfig,
    PolicyConfig,
    PrivacyConfig,
    StateConfig,
    config_yaml,
)

Obj = dict[str, Any]

NON_ROOT_UID = 10001


def name(values: Values, component: str) -> str:
    return f"{values.name_prefix}-{component}"


def labels(values: Values, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name(values, component),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "edgecloud",
    }


def selector(values: Values, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name(values, component)}


def meta(values: Values, component: str, suffix: str = "") -> Obj:
    return {
        "name": name(values, component) + suffix,
        "namespace": values.namespace,
        "labels": labels(values, component),
    }


def resources(r: Resources, gpus: int = 0) -> Obj:
    limits = dict(r.limits)
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(r.requests), "limits": limits}


def container_security(uid: int = NON_ROOT_UID) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def probe(path: str, port: str, period_s: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def scrape_annotations(port: int) -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def tracing_env(values: Values, service: str) -> list[Obj]:
    """The standard OpenTelemetry SDK variables; tracing stays off unless values enable it."""
    t = values.observability.tracing
    if not t.enabled:
        return [
            {"name": "OTEL_SDK_DISABLED", "value": "true"},
            {"name": "OTEL_TRACES_EXPORTER", "value": "none"},
        ]
    return [
        {"name": "OTEL_SDK_DISABLED", "value": "false"},
        {"name": "OTEL_TRACES_EXPORTER", "value": "otlp"},
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": t.otlp_endpoint},
        {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": t.protocol},
        {"name": "OTEL_SERVICE_NAME", "value": name(values, service)},
        {"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_traceidratio"},
        {"name": "OTEL_TRACES_SAMPLER_ARG", "value": str(t.sampler_ratio)},
        {"name": "OTEL_PROPAGATORS", "value": "tracecontext,baggage"},
    ]


def pod_spec(containers: list[Obj], volumes: list[Obj], grace_s: int = 30) -> Obj:
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": grace_s,
        "containers": containers,
        "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes],
    }


def container(image: Image, cname: str, args: list[str], port: int, **extra: Any) -> Obj:
    c: Obj = {
        "name": cname,
        "image": image.ref,
        "imagePullPolicy": image.pull_policy,
        "args": args,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "securityContext": container_security(),
        # Let the Service drop the pod before SIGTERM starts the drain.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    c.update(extra)
    return c


def deployment(
    values: Values, component: str, replicas: int | None, pod_spec: Obj, annotations: Obj
) -> Obj:
    spec: Obj = {
        "selector": {"matchLabels": selector(values, component)},
        "template": {
            "metadata": {"labels": labels(values, component), "annotations": annotations},
            "spec": pod_spec,
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(values, component),
            "spec": spec}


def service(values: Values, component: str, port: int, service_type: str = "ClusterIP") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(values, component),
        "spec": {
            "type": service_type,
            "selector": selector(values, component),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(values: Values, component: str, max_unavailable: int) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(values, component),
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": {"matchLabels": selector(values, component)},
        },
    }


def namespace(values: Values) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": values.namespace,
            "labels": {"app.kubernetes.io/part-of": "edgecloud"},
        },
    }


# --- gateway ---

def default_gateway_config(values: Values) -> GatewayConfig:
    """One cloud endpoint: the in-cluster node Service. Private requests fail closed (503)."""
    node_url = (
        f"http://{name(values, 'node')}.{values.namespace}.svc:{values.node.port}/v1"
    )
    node = EndpointConfig(
        name="cloud-node",
        tier="cloud",
        url=node_url,
        region="cloud",
        capabilities=["text"],
        max_concurrency=values.node.parallel * values.node.autoscaling.max_replicas,
    )
    privacy = PrivacyConfig(detect=list(DEFAULT_DETECT), action="edge_only", images="edge_only")
    return GatewayConfig(endpoints=[node], policy=PolicyConfig(privacy=privacy))


def gateway_config_text(values: Values) -> str:
    """The gateway's YAML: `gateway.config` (validated at load by the gateway's own model) or
    the default, pointed at the shared state (state_tier.py)."""
    if not (values.gateway.config or values.node.enabled):
        raise ValuesError("node.enabled is false: give the gateway's endpoints in gateway.config")
    return config_yaml(with_state(values, values.gateway.config or default_gateway_config(values)))


URL_ENV = "EDGECLOUD_REDIS_URL"


def with_state(values: Values, config: GatewayConfig) -> GatewayConfig:
    """The gateway config pointed at the shared Redis, unless it names its own state block."""
    st = values.gateway.state
    if st.redis == "none" or "state" in config.model_fields_set:
        return config
    state = StateConfig(backend="redis", url_env=URL_ENV, prefix=st.prefix)
    return config.model_copy(update={"state": state})


def state_env(values: Values) -> list[Obj]:
    """The gateway container's EDGECLOUD_REDIS_URL (never the URL of an external one inline)."""
    st = values.gateway.state
    if st.redis == "external":
        return [{"name": URL_ENV, "valueFrom": {"secretKeyRef": {
            "name": st.url_secret, "key": st.url_key}}}]
    if st.redis == "in_cluster":
        return [{"name": URL_ENV,
                 "value": f"redis://{name(values, 'redis')}.{values.namespace}.svc:6379/0"}]
    return []



def _exposure_args(values: Values, config_text: str) -> list[str]:
    """A gateway without auth.keys is an open relay: inside the cluster (ClusterIP) it is
    allowed, and said so; exposed outside it, refused."""
    g = values.gateway
    cfg = g.config or default_gateway_config(values)
    if cfg.auth.keys:
        return []
    if g.service_type != "ClusterIP":
        raise ValuesError(f"gateway.service_type is {g.service_type} but gateway.config has no "
                          "auth.keys: anyone who reaches it would spend your cloud keys and "
                          "budget. Add keys (edgecloud gateway --new-key NAME) or use ClusterIP")
    return ["--allow-anonymous"]


def gateway_objects(values: Values) -> list[Obj]:
    g = values.gateway
    config_text = gateway_config_text(values)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(values, "gateway", "-config"),
        "data": {"gateway.yaml": config_text},
    }
    args = ["gateway", "--host", "0.0.0.0", "--port", str(g.port),
            "--config", "/etc/edgecloud/gateway.yaml", *_exposure_args(values, config_text)]
    extra: Obj = {
        "env": tracing_env(values, "gateway") + state_env(values),
        "resources": resources(g.resources),
        # /healthz, not /readyz: with every upstream down the gateway must stay in the Service
        # and answer a clear OpenAI 503, not vanish into connection errors.
        "readinessProbe": probe("/healthz", "http", 5, 2),
        "livenessProbe": probe("/healthz", "http", 10, 3),
    }
    if g.env_secret:
        extra["envFrom"] = [{"secretRef": {"name": g.env_secret}}]
    main = container(g.image, "gateway", args, g.port, **extra)
    main["volumeMounts"].append(
        {"name": "config", "mountPath": "/etc/edgecloud", "readOnly": True}
    )
    volumes = [{"name": "config", "configMap": {"name": name(values, "gateway") + "-config"}}]
    annotations = {
        **scrape_annotations(g.port),
        # A changed config rolls the pods.
        "edgecloud.dev/config-sha256": hashlib.sha256(config_text.encode()).hexdigest()[:16],
    }
    replicas = None if g.autoscaling.enabled else g.replicas
    dep = deployment(
        values, "gateway", replicas, pod_spec([main], volumes, grace_s=60), annotations
    )
    return [
        config_map,
        dep,
        service(values, "gateway", g.port, g.service_type),
        pod_disruption_budget(values, "gateway", g.pdb_max_unavailable),
    ]


# --- model node ---

def _node_container(values: Values) -> Obj:
    n = values.node
    startup = probe("/healthz", "http", 5, max(1, n.startup_timeout_s // 5))
    if n.engine == "vllm":
        args = ["--model", n.model.hf_id, "--served-model-name", n.model.name,
                "--host", "0.0.0.0", "--port", str(n.port),
                "--max-num-seqs", str(n.parallel), "--max-model-len", str(n.ctx)]
        if values.observability.tracing.enabled:
            args += ["--otlp-traces-endpoint", values.observability.tracing.otlp_endpoint]
        # vLLM answers /health only when the engine is up; it has no separate /readyz.
        c = container(
            n.vllm_image, "node", args, n.port,
            env=tracing_env(values, "node"),
            resources=resources(n.resources, n.gpus),
            startupProbe={**startup, "httpGet": {"path": "/health", "port": "http"}},
            readinessProbe=probe("/health", "http", 5, 2),
            livenessProbe=probe("/health", "http", 10, 3),
        )
        # vLLM writes its caches under $HOME.
        c["env"].append({"name": "HOME", "value": "/tmp"})
        c["securityContext"]["readOnlyRootFilesystem"] = False
        return c
    args = ["serve", "--host", "0.0.0.0", "--port", str(n.port), "--model", n.model.path,
            "--name", n.model.name, "--threads", str(n.threads), "--ctx", str(n.ctx),
            "--parallel", str(n.parallel), "--max-queue", str(n.max_queue), "--preload"]
    env = tracing_env(values, "node")
    if n.admin_token_secret:
        env.append({"name": "EDGECLOUD_ADMIN_TOKEN", "valueFrom": {
            "secretKeyRef": {"name": n.admin_token_secret, "key": "token"}}})
    return container(
        n.image, "node", args, n.port,
        env=env,
        resources=resources(n.resources, n.gpus),
        startupProbe=startup,
        readinessProbe=probe("/readyz", "http", 5, 2),
        livenessProbe=probe("/healthz", "http", 10, 3),
    )


def node_objects(values: Values) -> list[Obj]:
    n = values.node
    if not n.enabled:
        return []
    main = _node_container(values)
    volumes: list[Obj] = []
    if n.model.pvc:
        volumes.append({"name": "models", "persistentVolumeClaim": {
            "claimName": n.model.pvc, "readOnly": True}})
        main["volumeMounts"].append(
            {"name": "models", "mountPath": "/models", "readOnly": True})
    pod = pod_spec([main], volumes, grace_s=120)
    if n.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                               "effect": "NoSchedule"}]
    # The autoscaler owns the replica count; without one, run the minimum.
    replicas = n.autoscaling.min_replicas if n.autoscaling.mode == "none" else None
    dep = deployment(values, "node", replicas, pod, scrape_annotations(n.port))
    dep["spec"]["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    return [
        dep,
        service(values, "node", n.port),
        pod_disruption_budget(values, "node", n.pdb_max_unavailable),
    ]
