"""Pseudonymisable personal data in a decision: placeable in the cloud when the gateway may send
it as surrogates, with the cost difference stated."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgecloud.decide.analysis import decide
from edgecloud.decide.decision import choose, evaluate_options
from edgecloud.decide.gateway_config import gateway_config, render_gateway_yaml
from edgecloud.decide.tco import bound_share
from edgecloud.gateway.config import parse_config
from tests.decide.decide_samples import inputs, workload
from tests.decide.test_decision import BREAK_EVEN

LISTED = ["email", "phone", "id_card", "bank_card", "iban", "ip"]
LOW = BREAK_EVEN / 2  # where cloud-only would be the cheaper option


def _inputs(**compliance: object):  # type: ignore[no-untyped-def]
    return inputs(workload(requests_per_day=LOW, compliance={"personal_data_share": 0.3,
                                                              **compliance}))


def test_the_pseudonymisable_share_may_use_the_cloud() -> None:
    strict = _inputs()
    assert choose(evaluate_options(strict)) == "edge"  # all personal data bound to the edge
    part = _inputs(pseudonymize=LISTED, pseudonymizable_share=0.5)
    assert bound_share(part.workload, part.prices) == pytest.approx(0.15)
    every = _inputs(pseudonymize=LISTED, pseudonymizable_share=1.0)
    assert bound_share(every.workload, every.prices) == 0
    assert choose(evaluate_options(every)) == "cloud"
    # Without the gateway allowing it, the share changes nothing.
    unlisted = _inputs(pseudonymizable_share=1.0)
    assert choose(evaluate_options(unlisted)) == "edge"


def test_the_decision_states_the_cost_difference() -> None:
    d = decide(_inputs(pseudonymize=LISTED, pseudonymizable_share=1.0))
    assert d.recommended == "cloud"
    text = next(r.text for r in d.reasons if r.text.startswith("pseudonymisation"))
    with_it = d.options["cloud"].cost.tco
    without = decide(_inputs()).options["edge"].cost.tco
    assert "30% of requests go to the cloud as surrogates" in text
    assert "cloud-only costs" in text and "edge-only without it" in text
    assert f"{with_it - without:,.0f}" in text.replace("−", "-")
    assert not any(r.text.startswith("pseudonymisation") for r in decide(_inputs()).reasons)


def test_the_emitted_gateway_config_allows_it() -> None:
    i = _inputs(pseudonymize=["email", "phone"], pseudonymizable_share=1.0)
    plan = evaluate_options(i)["cloud"].cost.years[0]
    cfg = parse_config(render_gateway_yaml(gateway_config(i, "cloud", plan), "cloud", "w"))
    assert cfg.policy.privacy.pseudonymize == ["email", "phone"]


def test_secrets_cannot_be_listed() -> None:
    with pytest.raises(ValidationError, match="secrets"):
        _inputs(pseudonymize=["secret"])
