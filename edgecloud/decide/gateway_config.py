"""The gateway configuration that carries out a decision (shared/DESIGN.md's shape).

Pure: `gateway_config` builds a real `GatewayConfig`, so what `decide` emits is validated by the
same model that the gateway loads it with; `render_gateway_yaml` turns it into YAML text.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from edgecloud.decide.decision import DecisionInputs
from edgecloud.decide.errors import InputError
from edgecloud.decide.tco import Option, YearPlan
from edgecloud.gateway.config import (
    EndpointConfig,
    GatewayConfig,
    OffloadConfig,
    PolicyConfig,
    Price,
    PrivacyConfig,
    config_yaml,
)


def _slug(text: str) -> str:
    """A name the gateway accepts (letters, digits, `-`, `_`, `.`) and a valid host label."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-").lower() or "site"


def _edge_endpoints(inputs: DecisionInputs, plan: YearPlan) -> list[EndpointConfig]:
    e = inputs.prices.edge
    perf = inputs.edge
    caps = list(e.capabilities)
    if perf.images is not None and "vision" not in caps:
        caps.append("vision")  # the bench measured this edge reading screenshots
    out: list[EndpointConfig] = []
    for site, boxes in plan.boxes_by_site.items():
        slug = _slug(site)
        for i in range(1, boxes + 1):
            # Sized by the measured operating point when the bench found one.
            sized: dict[str, Any] = (
                {"max_concurrency": max(1, int(perf.operating_level))}
                if perf.scenario == "concurrency" and perf.operating_level
                else {}
            )
            out.append(
                EndpointConfig(
                    name=f"edge-{slug}-{i}",
                    tier="edge",
                    url=e.url_template.format(site=slug, index=i),
                    region=e.region,
                    capabilities=caps,
                    **sized,
                )
            )
    return out


def _cloud_endpoint(inputs: DecisionInputs) -> EndpointConfig:
    c = inputs.prices.cloud
    price: dict[str, Any] = (
        {"price": Price(input_per_mtok=c.input_per_mtok, output_per_mtok=c.output_per_mtok)}
        if c.pricing == "per_token"
        else {}
    )
    return EndpointConfig(
        name=f"cloud-{_slug(c.region)}",
        tier="cloud",
        url=c.url,
        api_key_env=c.api_key_env,
        region=c.region,
        capabilities=list(c.capabilities),
        **price,
    )


def gateway_config(inputs: DecisionInputs, option: Option, plan: YearPlan) -> GatewayConfig:
    """Endpoints and policy for `option`, sized by `plan` (the first year's fleet)."""
    try:
        return _build(inputs, option, plan)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InputError(
            f"the gateway config for option {option} would be invalid ({where}: {err['msg']}); "
            "check edge.url_template, cloud.url and the regions in the prices file",
            field="gateway",
        ) from None


def _build(inputs: DecisionInputs, option: Option, plan: YearPlan) -> GatewayConfig:
    endpoints: list[EndpointConfig] = []
    if option != "cloud":
        endpoints += _edge_endpoints(inputs, plan)
    if option != "edge":
        endpoints.append(_cloud_endpoint(inputs))
    w = inputs.workload
    comp = w.compliance
    # Strict: detected personal data and screenshots stay on the edge. Not strict: detect
    # nothing, so personal data may go wherever the rest of the policy sends it.
    privacy = (
        PrivacyConfig(detect=list(comp.detect), action="edge_only", images="edge_only",
                      pseudonymize=list(comp.pseudonymize))
        if comp.strict
        else PrivacyConfig(detect=[], action="edge_only", images="allow")
    )
    # Hybrid: public requests use the edge while it has room and go to the cloud once it queues.
    offload: dict[str, Any] = {}
    if option == "hybrid":
        offload["offload"] = OffloadConfig(edge_queue_above=0)
    policy = PolicyConfig(
        residency={rule.region: list(rule.allowed) for rule in comp.residency},
        privacy=privacy,
        slo_ms=w.slo.e2e_ms,
        default_output_tokens=max(1, round(w.tokens.output_per_request)),
        **offload,
    )
    return GatewayConfig(endpoints=endpoints, policy=policy)


def render_gateway_yaml(config: GatewayConfig, option: Option, workload_name: str) -> str:
    """YAML text with a header saying where it came from and what to fill in."""
    header = (
        f"# Gateway configuration written by `edgecloud decide` for {workload_name!r}:\n"
        f"# option {option}. Edge URLs follow prices edge.url_template: point them at your\n"
        "# boxes. Secrets come from the environment (api_key_env), never from this file.\n"
    )
    return header + config_yaml(config)
