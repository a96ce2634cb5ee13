"""Autoscaling objects: nodes on in-flight requests per pod (KEDA or HPA + Prometheus adapter),
the gateway on CPU.

Both node modes drive the same HPA algorithm with the same `behavior` block; they differ in
who turns the PromQL into a metric: KEDA's Prometheus scaler (the default: the query lives
beside the workload, no cluster-wide adapter rules) or the Prometheus adapter's rule.
"""

from __future__ import annotations

from edgecloud.deploy import metrics as m
from edgecloud.deploy.values import ScalePolicy, Values
from edgecloud.deploy.workloads import Obj, meta, name

# The custom metric the Prometheus adapter exposes for HPA mode.
ADAPTER_METRIC = "edgecloud_node_inflight_requests"


def quantity(x: float) -> str:
    """A Kubernetes quantity for `x` (milli-units when it is not whole)."""
    if float(x).is_integer():
        return str(int(x))
    return f"{round(x * 1000)}m"


def inflight_query(values: Values) -> str:
    """PromQL for all in-flight (running + queued) requests of the node pods."""
    sel = f'namespace="{values.namespace}",component="node"'
    if values.node.engine == "vllm":
        return f"sum({m.VLLM_RUNNING}{{{sel}}} + {m.VLLM_WAITING}{{{sel}}})"
    return f"sum({m.NODE_IN_FLIGHT.name}{{{sel}}})"


def _direction(p: ScalePolicy) -> Obj:
    policies: list[Obj] = []
    if p.pods_per_period is not None:
        policies.append({"type": "Pods", "value": p.pods_per_period, "periodSeconds": p.period_s})
    if p.percent_per_period is not None:
        policies.append(
            {"type": "Percent", "value": p.percent_per_period, "periodSeconds": p.period_s}
        )
    return {
        "stabilizationWindowSeconds": p.stabilization_window_s,
        "selectPolicy": p.select_policy,
        "policies": policies,
    }


def behavior(values: Values) -> Obj:
    a = values.node.autoscaling
    return {"scaleUp": _direction(a.scale_up), "scaleDown": _direction(a.scale_down)}


def keda_scaled_object(values: Values) -> Obj:
    a = values.node.autoscaling
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(values, "node"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": name(values, "node")},
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "pollingInterval": a.polling_interval_s,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "name": name(values, "node"),
                    "behavior": behavior(values),
                },
            },
            "triggers": [{
                "type": "prometheus",
                "name": "inflight-requests",
                # AverageValue: desired = ceil(total in-flight / threshold), the HPA formula.
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": values.observability.prometheus_url,
                    "query": inflight_query(values),
                    "threshold": f"{a.target_inflight_per_pod:g}",
                    # An empty answer (Prometheus restarting) must not scale nodes to the minimum.
                    "ignoreNullValues": "false",
                },
            }],
        },
    }


def hpa(
    values: Values, component: str, min_replicas: int, max_replicas: int, metric: Obj,
    behavior_: Obj,
) -> Obj:
    """A HorizontalPodAutoscaler (autoscaling/v2) of the component's Deployment."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(values, component),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": name(values, component)},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [metric],
            "behavior": behavior_,
        },
    }


def node_hpa(values: Values) -> Obj:
    a = values.node.autoscaling
    metric = {
        "type": "Pods",
        "pods": {
            "metric": {"name": ADAPTER_METRIC},
            "target": {"type": "AverageValue",
                       "averageValue": quantity(a.target_inflight_per_pod)},
        },
    }
    return hpa(values, "node", a.min_replicas, a.max_replicas, metric, behavior(values))


def adapter_rules(values: Values) -> Obj:
    """The Prometheus adapter rule that turns the node gauges into a per-pod custom metric."""
    if values.node.engine == "vllm":
        series = m.VLLM_RUNNING
        query = f"{m.VLLM_RUNNING}{{<<.LabelMatchers>>}} + {m.VLLM_WAITING}{{<<.LabelMatchers>>}}"
    else:
        series = m.NODE_IN_FLIGHT.name
        query = f"{series}{{<<.LabelMatchers>>}}"
    return {
        "rules": [{
            "seriesQuery": f'{series}{{namespace!="",pod!=""}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"},
                                        "pod": {"resource": "pod"}}},
            "name": {"matches": f"^{series}$", "as": ADAPTER_METRIC},
            "metricsQuery": f"sum({query}) by (<<.GroupBy>>)",
        }]
    }


def gateway_hpa(values: Values) -> Obj:
    g = values.gateway.autoscaling
    metric = {
        "type": "Resource",
        "resource": {"name": "cpu",
                     "target": {"type": "Utilization", "averageUtilization": g.target_cpu_percent}},
    }
    gateway_behavior = {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
                      "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
    }
    return hpa(values, "gateway", g.min_replicas, g.max_replicas, metric, gateway_behavior)


def autoscaling_objects(values: Values) -> list[Obj]:
    """The autoscaler objects the values ask for (node and gateway)."""
    out: list[Obj] = []
    mode = values.node.autoscaling.mode if values.node.enabled else "none"
    if mode == "keda":
        out.append(keda_scaled_object(values))
    elif mode == "hpa":
        out.append(node_hpa(values))
    if values.gateway.autoscaling.enabled:
        out.append(gateway_hpa(values))
    return out
