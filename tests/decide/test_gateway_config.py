"""The emitted gateway config loads in the gateway and carries out the chosen option."""

from __future__ import annotations

import pytest

from edgecloud.decide.decision import evaluate_options
from edgecloud.decide.errors import InputError
from edgecloud.decide.gateway_config import gateway_config, render_gateway_yaml
from edgecloud.decide.tco import OPTIONS, Option
from edgecloud.gateway.config import DEFAULT_DETECT, GatewayConfig, parse_config
from tests.decide.decide_samples import inputs, prices, workload

RULE = {"region": "eu", "share": 0.2, "allowed": ["eu-central-1", "device"]}


def _emit(option: Option, **compliance: object) -> tuple[GatewayConfig, int]:
    comp = {"personal_data_share": 0.3, "residency": [RULE], **compliance}
    i = inputs(workload(compliance=comp, users={"regions": {"eu west": 0.6, "us": 0.4}}))
    plan = evaluate_options(i)[option].cost.years[0]
    built = gateway_config(i, option, plan)
    text = render_gateway_yaml(built, option, "w")
    loaded = parse_config(text, "gateway.yaml")
    # What decide built is what the gateway loads: the same model on both sides.
    assert loaded == built
    return loaded, plan.boxes


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("strict", [True, False])
def test_the_gateway_loads_the_emitted_config(option: Option, strict: bool) -> None:
    cfg, boxes = _emit(option, strict=strict)
    want = {"edge": {"edge"}, "cloud": {"cloud"}, "hybrid": {"edge", "cloud"}}[option]
    if boxes == 0:  # not strict: nothing is bound to the edge, the hybrid has no boxes
        want = want - {"edge"}
    assert {e.tier for e in cfg.endpoints} == want
    assert len(cfg.endpoints) == boxes + (option != "edge")
    assert cfg.policy.residency == {"eu": ["eu-central-1", "device"]}
    assert cfg.policy.slo_ms == 10_000 and cfg.policy.default_output_tokens == 100
    if strict:
        assert cfg.policy.privacy.detect and cfg.policy.privacy.images == "edge_only"
    else:  # personal data may leave the edge: nothing is detected, screenshots are allowed
        assert cfg.policy.privacy.detect == [] and cfg.policy.privacy.images == "allow"
    if option == "hybrid":
        assert cfg.policy.offload.edge_queue_above == 0


def test_endpoints_follow_the_sizing_and_the_prices() -> None:
    cfg, boxes = _emit("hybrid")
    edge = [e for e in cfg.endpoints if e.tier == "edge"]
    assert [e.name for e in edge] == ["edge-eu-west-1", "edge-us-1"][: len(edge)]
    assert edge[0].url == "http://edge-eu-west-1:8080/v1" and edge[0].region == "device"
    (cloud,) = [e for e in cfg.endpoints if e.tier == "cloud"]
    assert cloud.region == "eu-central-1" and cloud.api_key_env == "CLOUD_API_KEY"
    assert (cloud.price.input_per_mtok, cloud.price.output_per_mtok) == (1.0, 10.0)


def test_the_default_detection_set_is_the_gateway_s_own() -> None:
    cfg, _ = _emit("edge")
    assert cfg.policy.privacy.detect == list(DEFAULT_DETECT)
    assert "iban" in cfg.policy.privacy.detect


def test_an_edge_url_the_gateway_would_refuse_is_an_input_error() -> None:
    i = inputs(p=prices(edge__url_template="edge-{site}-{index}:8080"))
    plan = evaluate_options(i)["edge"].cost.years[0]
    with pytest.raises(InputError, match="url_template"):
        gateway_config(i, "edge", plan)
