"""The Grafana dashboard: one row each for the gateway, the model nodes and the fleet.

Panels are built from `edgecloud.deploy.metrics`, so the names match the alert rules and the
code; the Prometheus data source is a dashboard variable, chosen at import.
"""

from __future__ import annotations

from typing import Any

from edgecloud.deploy import metrics as m

Obj = dict[str, Any]
DS: Obj = {"type": "prometheus", "uid": "${datasource}"}
W = "$__rate_interval"


class _Layout:
    """Places panels left to right, 12 columns wide, 8 high, in rows."""

    def __init__(self) -> None:
        self.panels: list[Obj] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append({"type": "row", "title": title, "id": self.next_id, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.next_id += 1
        self.y += 1

    def add(self, title: str, targets: list[tuple[str, str]], unit: str = "short",
            kind: str = "timeseries") -> None:
        self.panels.append({
            "type": kind,
            "title": title,
            "id": self.next_id,
            "datasource": DS,
            "gridPos": {"h": 8, "w": 12, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": leg}
                for i, (expr, leg) in enumerate(targets)
            ],
        })
        self.next_id += 1
        self.x += 12
        if self.x >= 24:
            self.x = 0
            self.y += 8


def _quantiles(hist: m.Metric, by: str = "") -> list[tuple[str, str]]:
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({hist.bucket}[{W}])))", f"p{p}{suffix}")
        for q, p in ((0.5, "50"), (0.95, "95"), (0.99, "99"))
    ]


def dashboard(namespace: str = "edgecloud") -> Obj:
    """The dashboard JSON model (Grafana 10+), importable as is."""
    lay = _Layout()
    lay.row("Gateway")
    lay.add("Requests/s by placement and endpoint",
            [(f"sum by (placement, endpoint) (rate({m.GATEWAY_REQUESTS.name}[{W}]))",
              "{{placement}} / {{endpoint}}")], "reqps")
    lay.add("Requests/s by placement reason",
            [(f"sum by (reason) (rate({m.GATEWAY_REQUESTS.name}[{W}]))", "{{reason}}")], "reqps")
    lay.add("Errors and fallbacks",
            [(f'sum by (status) (rate({m.GATEWAY_REQUESTS.name}{{status=~"[45].."}}[{W}]))',
              "{{status}}"),
             (f"sum(rate({m.GATEWAY_FALLBACKS.name}[{W}]))", "fallbacks")], "reqps")
    lay.add("Privacy and residency refusals",
            [(f"sum by (reason) (rate({m.GATEWAY_REFUSALS.name}[{W}]))", "{{reason}}")], "reqps")
    lay.add("Latency the gateway adds", _quantiles(m.GATEWAY_ADDED_LATENCY), "s")
    lay.add("Endpoint health (1 = up) and breaker (0 closed, 1 half-open, 2 open)",
            [(f"min by (endpoint) ({m.GATEWAY_ENDPOINT_UP.name})", "healthy {{endpoint}}"),
             (f"max by (endpoint) ({m.GATEWAY_ENDPOINT_BREAKER.name})", "breaker {{endpoint}}")])
    lay.add("In flight per endpoint",
            [(f"sum by (endpoint, tier) ({m.GATEWAY_ENDPOINT_IN_FLIGHT.name})",
              "{{tier}} / {{endpoint}}")])

    lay.row("Model nodes")
    lay.add("Requests/s by status",
            [(f"sum by (status) (rate({m.NODE_REQUESTS.name}[{W}]))", "{{status}}")], "reqps")
    lay.add("Time to first token", _quantiles(m.NODE_TTFT), "s")
    lay.add("End-to-end latency", _quantiles(m.NODE_E2E), "s")
    lay.add("Tokens/s",
            [(f"sum(rate({m.NODE_OUTPUT_TOKENS.name}[{W}]))", "output"),
             (f"sum(rate({m.NODE_PROMPT_TOKENS.name}[{W}]))", "prompt")])
    lay.add("In-flight per pod (the autoscaling metric)",
            [(f"sum by (pod) ({m.NODE_IN_FLIGHT.name})", "{{pod}}"),
             (f"sum by (pod) ({m.NODE_ACTIVE_SLOTS.name})", "generating {{pod}}"),
             (f"max by (pod) ({m.NODE_QUEUE_DEPTH.name})", "queued {{pod}}")])
    lay.add("Wait for a slot", _quantiles(m.NODE_QUEUE_WAIT), "s")
    lay.add("Refused with 429 (slots and queue full)",
            [(f"sum by (pod) (rate({m.NODE_REJECTED.name}[{W}]))", "{{pod}}")], "reqps")
    lay.add("Ready node pods",
            [(f'count(up{{namespace="{namespace}",component="node"}} == 1)', "ready")])
    lay.add("Cold start: model load and warm-up",
            [(f"max by (pod) ({m.NODE_MODEL_LOAD.name})", "load {{pod}}"),
             (f"max by (pod) ({m.NODE_WARMUP.name})", "warm-up {{pod}}")], "s")

    lay.row("Fleet")
    lay.add("Devices by model version",
            [(f"sum by (model, version) ({m.FLEET_DEVICES.name})", "{{model}} {{version}}")])
    lay.add("Rollout stage (% of fleet)",
            [(f"max by (model, version) ({m.FLEET_ROLLOUT_STAGE.name})",
              "{{model}} {{version}}")], "percent")
    lay.add("Rollouts aborted",
            [(f"sum by (model) (increase({m.FLEET_ROLLOUTS_ABORTED.name}[1h]))", "{{model}}")])
    lay.add("Device reports/s", [(f"sum(rate({m.FLEET_REPORTS.name}[{W}]))", "reports")], "reqps")
    lay.add("Device events (activated, rolled back, refused, recovered)",
            [(f"sum by (kind) (increase({m.FLEET_DEVICE_EVENTS.name}[{W}]))", "{{kind}}")])
    lay.add("Updates agents refused, by reason",
            [(f"sum by (reason) (increase({m.FLEET_AGENT_REFUSALS.name}[{W}]))", "{{reason}}")])

    return {
        "title": "edgecloud",
        "uid": "edgecloud-overview",
        "tags": ["edgecloud"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0,
        }]},
        "annotations": {"list": []},
        "panels": lay.panels,
    }


def exprs(dash: Obj) -> list[str]:
    """Every PromQL expression of a dashboard."""
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
