"""The emitted gateway config has the shape of shared/DESIGN.md and carries out the option."""

from __future__ import annotations

from typing import Literal

import pytest
import yaml
from decide_samples import inputs, workload
from pydantic import BaseModel, ConfigDict, Field

from edgecloud.decide.decision import evaluate_options
from edgecloud.decide.gateway_config import gateway_config, render_gateway_yaml
from edgecloud.decide.tco import OPTIONS


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Price(_Closed):
    input_per_mtok: float
    output_per_mtok: float


class Endpoint(_Closed):
    """The endpoint shape of the design document's gateway configuration."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    tier: Literal["edge", "cloud"]
    url: str
    region: str
    capabilities: list[str]
    max_concurrency: int | None = None
    api_key_env: str | None = None
    model: str | None = None
    price: Price | None = None


class Privacy(_Closed):
    detect: list[Literal["email", "phone", "id_card", "bank_card", "iban", "ip", "secret"]]
    action: Literal["edge_only"]
    images: Literal["edge_only", "allow"]


class Policy(_Closed):
    residency: dict[str, list[str]]
    privacy: Privacy
    offload: dict[str, int] | None = None
    slo_ms: float | None = None
    default_output_tokens: int | None = None


class GatewayConfig(_Closed):
    endpoints: list[Endpoint]
    policy: Policy


RULE = {"region": "eu", "share": 0.2, "allowed": ["eu-central-1", "device"]}


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_emits_a_config_of_the_design_shape(option: str) -> None:
    i = inputs(workload(compliance={"personal_data_share": 0.3, "residency": [RULE]}))
    plan = evaluate_options(i)[option].cost.years[0]  # type: ignore[index]
    text = render_gateway_yaml(gateway_config(i, option, plan), option, "w")  # type: ignore[arg-type]
    cfg = GatewayConfig.model_validate(yaml.safe_load(text))
    tiers = {e.tier for e in cfg.endpoints}
    assert tiers == {"edge": {"edge"}, "cloud": {"cloud"}, "hybrid": {"edge", "cloud"}}[option]
    assert cfg.policy.residency == {"eu": ["eu-central-1", "device"]}
    assert cfg.policy.privacy.detect  # strict: the detectors are on
    assert len([e for e in cfg.endpoints if e.tier == "edge"]) == plan.boxes
    assert (cfg.policy.offload is not None) == (option == "hybrid")


def test_non_strict_privacy_allows_the_cloud() -> None:
    i = inputs(workload(compliance={"personal_data_share": 0.3, "strict": False}))
    plan = evaluate_options(i)["cloud"].cost.years[0]
    cfg = gateway_config(i, "cloud", plan)
    assert cfg["policy"]["privacy"] == {"detect": [], "action": "edge_only", "images": "allow"}
    assert cfg["policy"]["slo_ms"] == 10_000 and cfg["policy"]["default_output_tokens"] == 100
    assert cfg["endpoints"][0]["price"] == {"input_per_mtok": 1.0, "output_per_mtok": 10.0}


def test_site_names_become_valid_endpoint_names_and_hosts() -> None:
    i = inputs(workload(users={"regions": {"São Paulo": 0.5, "eu west": 0.5}}))
    plan = evaluate_options(i)["edge"].cost.years[0]
    cfg = GatewayConfig.model_validate(gateway_config(i, "edge", plan))
    assert [e.name for e in cfg.endpoints] == ["edge-s-o-paulo-1", "edge-eu-west-1"]
    assert cfg.endpoints[0].url == "http://edge-s-o-paulo-1:8080/v1"
