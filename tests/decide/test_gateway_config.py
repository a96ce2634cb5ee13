"""The emitted gateway config has the shape of shared/DESIGN.md and carries out the option."""

from __future__ import annotations

from typing import Literal

import pytest
import yaml
from decide_samples import inputs, workload
from pydantic import BaseModel, ConfigDict

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

    name: str
    tier: Literal["edge", "cloud"]
    url: str
    region: str
    capabilities: list[str]
    max_concurrency: int | None = None
    api_key_env: str | None = None
    model: str | None = None
    price: Price | None = None


class Privacy(_Closed):
    detect: list[str]
    action: Literal["edge_only", "allow"]
    images: Literal["edge_only", "allow"]


class Policy(_Closed):
    residency: dict[str, list[str]]
    privacy: Privacy
    offload: dict[str, int] | None = None


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
    assert cfg.policy.privacy.action == "edge_only"
    assert len([e for e in cfg.endpoints if e.tier == "edge"]) == plan.boxes
    assert (cfg.policy.offload is not None) == (option == "hybrid")


def test_non_strict_privacy_allows_the_cloud() -> None:
    i = inputs(workload(compliance={"personal_data_share": 0.3, "strict": False}))
    plan = evaluate_options(i)["cloud"].cost.years[0]
    cfg = gateway_config(i, "cloud", plan)
    assert cfg["policy"]["privacy"]["action"] == "allow"
    assert cfg["endpoints"][0]["price"] == {"input_per_mtok": 1.0, "output_per_mtok": 10.0}
