"""Render every deployment file from values: a pure `render` (path -> text) and `write_tree`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from edgecloud.deploy.autoscaling import adapter_rules, autoscaling_objects
from edgecloud.deploy.dashboard import dashboard
from edgecloud.deploy.errors import DeployError
from edgecloud.deploy.fleet_tier import fleet_objects, postgres_objects
from edgecloud.deploy.monitoring import RULES_FILE, alert_rules, operator_objects, scrape_config
from edgecloud.deploy.state_tier import redis_objects
from edgecloud.deploy.values import Values
from edgecloud.deploy.workloads import Obj, gateway_objects, namespace, node_objects

HEADER = "# Rendered by `edgecloud deploy k8s`; edit the values file and render again.\n"


class _Dumper(yaml.SafeDumper):
    """Block style, and multi-line strings (embedded configs) as literal blocks."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(doc: object) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def dump_documents(objs: list[Obj]) -> str:
    return HEADER + "".join("---\n" + dump_yaml(o) for o in objs)


def kubernetes_objects(values: Values) -> dict[str, list[Obj]]:
    """The Kubernetes objects, grouped by the file they go to."""
    groups = {
        "00-namespace.yaml": [namespace(values)],
        "10-postgres.yaml": postgres_objects(values),
        "20-node.yaml": node_objects(values),
        "25-redis.yaml": redis_objects(values),
        "30-gateway.yaml": gateway_objects(values),
        "40-fleet.yaml": fleet_objects(values),
        "50-autoscaling.yaml": autoscaling_objects(values),
        "60-monitoring.yaml": operator_objects(values),
    }
    return {f: objs for f, objs in groups.items() if objs}


def render(values: Values) -> dict[str, str]:
    """Every file of the deployment, by its path relative to the output folder."""
    files = {
        f"kubernetes/{f}": dump_documents(objs) for f, objs in kubernetes_objects(values).items()
    }
    files["prometheus/prometheus.yml"] = HEADER + dump_yaml(scrape_config(values))
    files[f"prometheus/{RULES_FILE}"] = HEADER + dump_yaml(alert_rules(values))
    if values.node.enabled and values.node.autoscaling.mode == "hpa":
        files["prometheus/adapter-rules.yaml"] = HEADER + dump_yaml(adapter_rules(values))
    files["grafana/edgecloud-dashboard.json"] = (
        json.dumps(dashboard(values.namespace), indent=2) + "\n"
    )
    files["values.yaml"] = HEADER + dump_yaml(values.model_dump(mode="json"))
    return files


def write_tree(files: dict[str, str], out: str | Path) -> list[Path]:
    """Write the rendered files under `out`; returns the paths written."""
    root = Path(out)
    written = []
    try:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise DeployError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    return written
