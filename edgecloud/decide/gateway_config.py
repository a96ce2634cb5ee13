"""The gateway configuration that carries out a decision (shared/DESIGN.md's shape).

Pure: `gateway_config` returns plain data; `render_gateway_yaml` turns it into YAML text.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from edgecloud.decide.decision import DecisionInputs
from edgecloud.decide.tco import Option, YearPlan


def _slug(text: str) -> str:
    """A name the gateway accepts (letters, digits, `-`, `_`, `.`) and a valid host label."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-").lower() or "site"


def _edge_endpoints(inputs: DecisionInputs, plan: YearPlan) -> list[dict[str, Any]]:
    e = inputs.prices.edge
    perf = inputs.edge
    out: list[dict[str, Any]] = []
    for site, boxes in plan.boxes_by_site.items():
        slug = _slug(site)
        for i in range(1, boxes + 1):
            ep: dict[str, Any] = {
                "name": f"edge-{slug}-{i}",
                "tier": "edge",
                "url": e.url_template.format(site=slug, index=i),
                "region": e.region,
                "capabilities": list(e.capabilities),
            }
            if perf.scenario == "concurrency" and perf.operating_level:
                ep["max_concurrency"] = max(1, int(perf.operating_level))
            out.append(ep)
    return out


def _cloud_endpoint(inputs: DecisionInputs) -> dict[str, Any]:
    c = inputs.prices.cloud
    ep: dict[str, Any] = {
        "name": f"cloud-{_slug(c.region)}",
        "tier": "cloud",
        "url": c.url,
        "api_key_env": c.api_key_env,
        "region": c.region,
        "capabilities": list(c.capabilities),
    }
    if c.pricing == "per_token":
        ep["price"] = {"input_per_mtok": c.input_per_mtok, "output_per_mtok": c.output_per_mtok}
    return ep


def gateway_config(inputs: DecisionInputs, option: Option, plan: YearPlan) -> dict[str, Any]:
    """Endpoints and policy for `option`, sized by `plan` (the first year's fleet)."""
    endpoints: list[dict[str, Any]] = []
    if option != "cloud":
        endpoints += _edge_endpoints(inputs, plan)
    if option != "edge":
        endpoints.append(_cloud_endpoint(inputs))
    w = inputs.workload
    comp = w.compliance
    # Strict: detected personal data and screenshots stay on the edge. Not strict: detect
    # nothing, so personal data may go wherever the rest of the policy sends it.
    privacy: dict[str, Any] = (
        {"detect": list(comp.detect), "action": "edge_only", "images": "edge_only"}
        if comp.strict
        else {"detect": [], "action": "edge_only", "images": "allow"}
    )
    policy: dict[str, Any] = {
        "residency": {rule.region: list(rule.allowed) for rule in comp.residency},
        "privacy": privacy,
        "slo_ms": w.slo.e2e_ms,
        "default_output_tokens": max(1, round(w.tokens.output_per_request)),
    }
    if comp.strict and comp.pseudonymize:
        privacy["pseudonymize"] = list(comp.pseudonymize)
    if option == "hybrid":
        # Public requests use the edge while it has room and go to the cloud once it queues.
        policy["offload"] = {"edge_queue_above": 0}
    return {"endpoints": endpoints, "policy": policy}


def render_gateway_yaml(config: dict[str, Any], option: Option, workload_name: str) -> str:
    """YAML text with a header saying where it came from and what to fill in."""
    header = (
        f"# Gateway configuration written by `edgecloud decide` for {workload_name!r}:\n"
        f"# option {option}. Edge URLs follow prices edge.url_template: point them at your\n"
        "# boxes. Secrets come from the environment (api_key_env), never from this file.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
