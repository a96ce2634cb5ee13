"""Prometheus: the scrape configuration and the alert rules (plain files, and the same as
Prometheus-Operator objects when the values ask for them).

Every metric name comes from `edgecloud.deploy.metrics`.
"""

from __future__ import annotations

from edgecloud.deploy import metrics as m
from edgecloud.deploy.values import Values
from edgecloud.deploy.workloads import Obj, meta

RULES_FILE = "alert-rules.yaml"
WINDOW = "5m"


def _relabel_common() -> list[Obj]:
    # The same three target labels in the plain config and the PodMonitor, so one set of
    # queries works with either.
    return [
        {"sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"},
        {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"},
        {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
         "targetLabel": "component"},
    ]


def _snake(relabel: Obj) -> Obj:
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {keys.get(k, k): v for k, v in relabel.items()}


FLEET_SECRETS = "/etc/prometheus/secrets"  # where Prometheus mounts the fleet's Secrets


def _fleet_scrape(values: Values) -> Obj:
    """How Prometheus reaches the fleet server's /metrics: with the operator token (https when
    the server has a certificate)."""
    f = values.fleet
    out: Obj = {"authorization": {
        "type": "Bearer",
        "credentials_file": f"{FLEET_SECRETS}/{f.operator_token_secret}/token",
    }}
    if f.tls_secret:
        out["scheme"] = "https"
        out["tls_config"] = {"ca_file": f"{FLEET_SECRETS}/{f.tls_secret}/tls.crt"}
    return out


def scrape_config(values: Values) -> Obj:
    """prometheus.yml: pods of the namespace that carry the prometheus.io annotations; the
    fleet server in a job of its own, which sends the operator token its /metrics needs."""
    interval = f"{values.observability.scrape_interval_s}s"
    component = "__meta_kubernetes_pod_label_app_kubernetes_io_component"

    def relabels(fleet: bool) -> list[Obj]:
        return [
            {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_part_of"],
             "action": "keep", "regex": "edgecloud"},
            {"source_labels": [component], "action": "keep" if fleet else "drop",
             "regex": "fleet"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
             "action": "keep", "regex": "true"},
            {"source_labels": ["__address__",
                               "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "action": "replace", "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
             "target_label": "__address__"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
             "action": "replace", "regex": "(.+)", "target_label": "__metrics_path__"},
            *(_snake(r) for r in _relabel_common()),
        ]

    sd = [{"role": "pod", "namespaces": {"names": [values.namespace]}}]
    jobs: list[Obj] = [
        {"job_name": "edgecloud", "kubernetes_sd_configs": sd, "relabel_configs": relabels(False)}
    ]
    if values.fleet.enabled:
        jobs.append({"job_name": "edgecloud-fleet", "kubernetes_sd_configs": sd,
                     **_fleet_scrape(values), "relabel_configs": relabels(True)})
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [RULES_FILE],
        "scrape_configs": jobs,
    }


def _ratio(num: str, den: str) -> str:
    return f"({num}) / clamp_min({den}, 1e-9)"


def _rate(series: str, matcher: str = "") -> str:
    sel = f"{{{matcher}}}" if matcher else ""
    return f"sum(rate({series}{sel}[{WINDOW}]))"


def _alert(alert: str, expr: str, for_: str, severity: str, summary: str, desc: str) -> Obj:
    return {
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, "app": "edgecloud"},
        "annotations": {"summary": summary, "description": desc},
    }


def alert_rules(values: Values) -> Obj:
    """Prometheus rule groups: error rate, TTFT, queue, fallbacks, refusals, down, rollouts."""
    slo = values.observability.slo
    ns = f'namespace="{values.namespace}"'
    gw_total = _rate(m.GATEWAY_REQUESTS.name)
    node_p95 = (f"histogram_quantile(0.95, sum by (le) "
                f"(rate({m.NODE_TTFT.bucket}[{WINDOW}])))")
    serving = [
        _alert("EdgecloudGatewayErrorRate",
               _ratio(_rate(m.GATEWAY_REQUESTS.name, 'status=~"5.."'), gw_total)
               + f" > {slo.error_rate}",
               "5m", "critical", "Gateway 5xx rate above SLO",
               f"More than {slo.error_rate:.1%} of gateway requests failed with a 5xx over "
               f"{WINDOW}: {{{{ $value | humanizePercentage }}}}."),
        _alert("EdgecloudNodeErrorRate",
               _ratio(_rate(m.NODE_REQUESTS.name, 'status=~"5.."'),
                      _rate(m.NODE_REQUESTS.name)) + f" > {slo.error_rate}",
               "5m", "critical", "Model node 5xx rate above SLO",
               "Model nodes answer {{ $value | humanizePercentage }} of requests with a 5xx."),
        _alert("EdgecloudNodeTTFTp95OverSLO", f"{node_p95} > {slo.ttft_p95_s}",
               "10m", "warning", "p95 time to first token over SLO",
               f"p95 TTFT is {{{{ $value | humanizeDuration }}}} (SLO {slo.ttft_p95_s} s); "
               "check the autoscaler and max replicas."),
        _alert("EdgecloudNodeQueueDepth",
               f"max by (pod) ({m.NODE_QUEUE_DEPTH.name}) > {slo.queue_depth:g}",
               "5m", "warning", "Requests queue on a model node",
               "{{ $labels.pod }} has {{ $value }} queued requests."),
        _alert("EdgecloudGatewayFallbackRate",
               _ratio(_rate(m.GATEWAY_FALLBACKS.name), gw_total) + f" > {slo.fallback_rate}",
               "10m", "warning", "Gateway falls back often",
               "{{ $value | humanizePercentage }} of requests were retried on another "
               "endpoint: one side is failing."),
        _alert("EdgecloudPrivacyResidencyRefusals",
               f"sum by (reason) (rate({m.GATEWAY_REFUSALS.name}[{WINDOW}])) "
               f"> {slo.refusals_per_s:g}",
               "5m", "warning", "Gateway refuses requests for privacy or residency",
               "{{ $value }} requests/s refused ({{ $labels.reason }}): the only allowed "
               "endpoint is down or the policy rejects this traffic."),
    ]
    availability = [
        _alert("EdgecloudEndpointDown", f"{m.GATEWAY_ENDPOINT_UP.name} == 0",
               "2m", "critical", "Gateway sees an endpoint down",
               "Endpoint {{ $labels.endpoint }} fails its health checks."),
        _alert("EdgecloudTargetDown", f'up{{{ns},component=~"gateway|node|fleet"}} == 0',
               "2m", "critical", "An edgecloud pod does not answer /metrics",
               "{{ $labels.component }} pod {{ $labels.pod }} is down."),
        _alert("EdgecloudFleetRolloutAborted",
               f"increase({m.FLEET_ROLLOUTS_ABORTED.name}[15m]) > 0",
               "0m", "critical", "A fleet rollout aborted",
               "The rollout of {{ $labels.model }} aborted: devices roll back to the previous "
               "version."),
        _alert("EdgecloudFleetControllerStalled",
               f"time() - {m.FLEET_CONTROLLER_LAST_RUN.name} > 300 "
               f"and {m.FLEET_CONTROLLER_LAST_RUN.name} > 0",
               "5m", "warning", "The fleet rollout controller stopped running",
               "No rollout controller pass for {{ $value | humanizeDuration }}: staged "
               "rollouts neither advance nor abort."),
    ]
    return {"groups": [
        {"name": "edgecloud-serving", "rules": serving},
        {"name": "edgecloud-availability", "rules": availability},
    ]}


def pod_monitor(values: Values, fleet: bool = False) -> Obj:
    """A PodMonitor for every part but the fleet server, or (fleet) for the fleet server with
    the operator token its /metrics needs."""
    endpoint: Obj = {
        "port": "http",
        "path": "/metrics",
        "interval": f"{values.observability.scrape_interval_s}s",
        "relabelings": _relabel_common(),
    }
    f = values.fleet
    if fleet:
        endpoint["bearerTokenSecret"] = {"name": f.operator_token_secret, "key": "token"}
        if f.tls_secret:
            endpoint["scheme"] = "https"
            endpoint["tlsConfig"] = {"ca": {"secret": {"name": f.tls_secret, "key": "tls.crt"}}}
    match = {"key": "app.kubernetes.io/component", "operator": "In" if fleet else "NotIn",
             "values": ["fleet"]}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {**meta(values, "monitoring"),
                     "name": values.name_prefix + ("-fleet" if fleet else "")},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/part-of": "edgecloud"},
                         "matchExpressions": [match]},
            "namespaceSelector": {"matchNames": [values.namespace]},
            "podMetricsEndpoints": [endpoint],
        },
    }


def prometheus_rule(values: Values) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {**meta(values, "monitoring"), "name": values.name_prefix},
        "spec": alert_rules(values),
    }


def operator_objects(values: Values) -> list[Obj]:
    if not values.observability.prometheus_operator:
        return []
    fleet = [pod_monitor(values, fleet=True)] if values.fleet.enabled else []
    return [pod_monitor(values), *fleet, prometheus_rule(values)]
