"""The policy's surrogate placement: when a private request may leave the edge, and when not."""

from __future__ import annotations

from typing import Any

import pytest

from edgecloud.gateway.config import PolicyConfig, parse_config
from edgecloud.gateway.errors import CapabilityMissing, ConfigError, NoAllowedEndpoint
from edgecloud.gateway.health import LatencyEstimator
from edgecloud.gateway.policy import Hints, PlacementPolicy
from tests.gateway.test_policy import _chat, _choose, _ep, _fleet

LISTED = ["email", "phone", "id_card", "bank_card", "iban", "ip"]
POLICY = PlacementPolicy(PolicyConfig(privacy={"pseudonymize": LISTED}))  # type: ignore[arg-type]


def _down(e: Any) -> None:
    """Marked down by its probe and its breaker open: not even tried in panic mode."""
    e.healthy = False
    e.breaker.failure(0.0)
    e.breaker.failure(0.0)


def _place(facts: Any, fleet: list[Any], hints: Hints | None = None) -> Any:
    """The decision and the rewritten body, as the gateway takes them."""
    d = _choose(facts, hints, fleet, policy=POLICY)
    if d.without_surrogates is None:
        return d, None
    return POLICY.with_surrogates(d, facts.body)


def test_the_edge_keeps_private_requests_it_can_take() -> None:
    d, rw = _place(_chat("mail bob@example.com"), _fleet())
    assert d.rule == "privacy.pii.email" and [e.name for e in d.order] == ["edge"]
    assert rw is None


def test_edge_down_sends_surrogates_to_the_cloud() -> None:
    fleet = _fleet()
    fleet[0].healthy = False
    d, rw = _place(_chat("mail bob@example.com"), fleet)
    assert d.rule == "privacy.pseudonymized" and d.restricted
    assert [e.config.tier for e in d.order] == ["cloud", "cloud", "edge"]  # edge: panic mode
    assert rw.body["messages"][0]["content"] == "mail [EMAIL_1]"
    _down(fleet[0])  # its breaker open too: the cloud only
    d, rw = _place(_chat("mail bob@example.com"), fleet)
    assert {e.config.tier for e in d.order} == {"cloud"}


def test_a_saturated_edge_offloads_with_surrogates_and_stays_the_last_resort() -> None:
    fleet = _fleet()
    fleet[0].in_flight = 5  # max_concurrency 2 + 3 waiting > edge_queue_above 2
    d, rw = _place(_chat("call 13812345678"), fleet)
    assert d.rule == "privacy.pseudonymized" and rw is not None
    assert d.order[-1].name == "edge" and d.order[0].config.tier == "cloud"


def test_a_predicted_deadline_miss_moves_it_to_a_faster_cloud() -> None:
    fleet = _fleet()
    fleet[0].latency = LatencyEstimator(ttft_s=0.5, per_token_s=0.05)
    fleet[1].latency = LatencyEstimator(ttft_s=0.2, per_token_s=0.01)
    fleet[2].latency = LatencyEstimator(ttft_s=0.3, per_token_s=0.02)
    d, rw = _place(_chat("IP 10.1.2.3"), fleet, Hints(deadline_ms=4000))
    assert d.rule == "privacy.pseudonymized" and d.primary.name == "cloud-eu"
    assert rw.body["messages"][0]["content"] == "IP [IP_1]"
    # When the cloud would miss it too and the edge is faster, the edge keeps it.
    fleet[1].latency = fleet[2].latency = LatencyEstimator(ttft_s=9, per_token_s=0.1)
    d, rw = _place(_chat("IP 10.1.2.3"), fleet, Hints(deadline_ms=4000))
    assert d.primary.name == "edge" and rw is None


def test_a_missing_capability_on_the_edge() -> None:
    long_text = "word " * 20_000 + " bob@example.com"
    fleet = [_ep("edge", "edge", "device", context=2048),
             _ep("cloud", "cloud", "us", context=100_000)]
    d, rw = _place(_chat(long_text), fleet)
    assert d.rule == "privacy.pseudonymized" and d.primary.name == "cloud"
    with pytest.raises(CapabilityMissing):
        _choose(_chat(long_text), fleet=fleet)  # without the option: the edge's 400


@pytest.mark.parametrize("text", ["bob@example.com api_key = abcdefghijklmnop",
                                  "bob@example.com sk-proj-abcdefghijklmnopqrstuvwxyz123"])
def test_a_secret_keeps_it_on_the_edge_or_refused(text: str) -> None:
    fleet = _fleet()
    fleet[0].in_flight = 5
    d, rw = _place(_chat(text), fleet)
    assert [e.name for e in d.order] == ["edge"] and rw is None  # queued on the edge
    _down(fleet[0])
    with pytest.raises(NoAllowedEndpoint) as err:
        _place(_chat(text), fleet)
    assert err.value.rule.startswith("privacy.pii.")


@pytest.mark.parametrize(("facts", "hints", "rule"), [
    (_chat("bob@example.com"), Hints(sensitivity="private"), "privacy.header"),
    (_chat("bob@example.com"), Hints(sensitivity="private", sensitivity_from_key=True),
     "privacy.key"),
    (_chat("bob@example.com", image=True), Hints(), "privacy.image"),
    (_chat("api_key = abcdefghijklmnop"), Hints(), "privacy.pii.secret"),
])
def test_what_is_not_listed_never_leaves(facts: Any, hints: Hints, rule: str) -> None:
    fleet = _fleet()
    _down(fleet[0])
    with pytest.raises(NoAllowedEndpoint) as err:
        _place(facts, fleet, hints)
    assert err.value.rule == rule


def test_unlisted_kinds_and_an_empty_list_keep_todays_behaviour() -> None:
    fleet = _fleet()
    _down(fleet[0])
    only_email = PlacementPolicy(PolicyConfig(privacy={"pseudonymize": ["email"]}))  # type: ignore[arg-type]
    with pytest.raises(NoAllowedEndpoint):
        _choose(_chat("call 13812345678"), fleet=fleet, policy=only_email)
    with pytest.raises(NoAllowedEndpoint):
        _choose(_chat("bob@example.com 13812345678"), fleet=fleet,
                policy=PlacementPolicy(PolicyConfig()))
    facts = _chat("bob@example.com 13812345678")
    d = _choose(facts, fleet=fleet, policy=only_email)
    assert d.rule == "privacy.pseudonymized"  # the phone is found when rewriting ...
    with pytest.raises(NoAllowedEndpoint) as err:  # ... and keeps it private
        only_email.with_surrogates(d, facts.body)
    assert err.value.rule == "privacy.pii.email"


def test_residency_still_limits_the_cloud_endpoints() -> None:
    fleet = _fleet()
    _down(fleet[0])
    policy = PlacementPolicy(PolicyConfig(residency={"eu": ["eu-central-1", "device"]},  # type: ignore[arg-type]
                                          privacy={"pseudonymize": LISTED}))
    d = _choose(_chat("bob@example.com"), Hints(region="eu"), fleet, policy=policy)
    assert [e.name for e in d.order] == ["cloud-eu"]


def test_config_checks_the_list() -> None:
    base = "endpoints: [{name: e, tier: edge, url: 'http://127.0.0.1:1/v1'}]\n"
    cfg = parse_config(base + "policy: {privacy: {pseudonymize: [email, ip]}}")
    assert cfg.policy.privacy.pseudonymize == ["email", "ip"]
    assert parse_config(base).policy.privacy.pseudonymize == []
    with pytest.raises(ConfigError, match="secrets and keys never leave"):
        parse_config(base + "policy: {privacy: {pseudonymize: [secret]}}")
    with pytest.raises(ConfigError, match="'badge'"):
        parse_config(base + "policy: {privacy: {pseudonymize: [badge]}}")
    ok = parse_config(base + "policy: {privacy: {patterns: {badge: 'B-[0-9]{5}'}, "
                      "pseudonymize: [badge]}}")
    assert ok.policy.privacy.pseudonymize == ["badge"]


# -- when the edge was chosen and then failed before answering ------------------------------
FAILED = NoAllowedEndpoint("privacy.pii.email",
                           "every allowed endpoint failed (edge: ConnectError)")


def _fallback(facts: Any, fleet: list[Any], hints: Hints | None = None,
              policy: PlacementPolicy = POLICY) -> Any:
    return policy.surrogate_fallback(FAILED, facts, hints or Hints(), fleet, 0.0, 0.0)


def test_an_edge_decision_may_fall_back_to_surrogates_in_the_cloud() -> None:
    fleet = _fleet()
    facts = _chat("mail bob@example.com")
    d = _choose(facts, fleet=fleet, policy=POLICY)
    assert [e.name for e in d.order] == ["edge"] and d.surrogates_if_failed
    f = _fallback(facts, fleet)
    assert f.rule == "privacy.pseudonymized" and f.restricted
    assert [e.name for e in f.order] == ["cloud-us", "cloud-eu"]  # cheapest first, no edge
    f, rw = POLICY.with_surrogates(f, facts.body)
    assert rw is not None and rw.body["messages"][0]["content"] == "mail [EMAIL_1]"
    assert "bob@" not in rw.raw.decode()


def test_a_secret_found_when_rewriting_keeps_the_edges_refusal() -> None:
    facts = _chat("bob@example.com api_key = abcdefghijklmnop")
    d = _choose(facts, fleet=_fleet(), policy=POLICY)
    assert d.surrogates_if_failed  # the first find is an e-mail ...
    f = _fallback(facts, _fleet())
    with pytest.raises(NoAllowedEndpoint) as err:  # ... the rewrite finds the key
        POLICY.with_surrogates(f, facts.body)
    assert err.value is FAILED


@pytest.mark.parametrize(("facts", "hints", "policy"), [
    (_chat("Write a haiku about rain"), Hints(), POLICY),  # public
    (_chat("bob@example.com"), Hints(sensitivity="private"), POLICY),
    (_chat("bob@example.com", image=True), Hints(), POLICY),
    (_chat("api_key = abcdefghijklmnop"), Hints(), POLICY),
    (_chat("bob@example.com"), Hints(), PlacementPolicy(PolicyConfig())),  # no list
    (_chat("call 13812345678"), Hints(),
     PlacementPolicy(PolicyConfig(privacy={"pseudonymize": ["email"]}))),  # type: ignore[arg-type]  # noqa: E501
])
def test_only_pseudonymisable_edge_decisions_are_marked(facts: Any, hints: Hints,
                                                         policy: PlacementPolicy) -> None:
    fleet = [_ep("edge", "edge", "device", ["text", "vision"]), *_fleet()[1:]]
    assert not _choose(facts, hints, fleet, policy=policy).surrogates_if_failed


def test_a_decision_that_already_has_surrogates_is_not_marked() -> None:
    fleet = _fleet()
    fleet[0].healthy = False
    d = _choose(_chat("mail bob@example.com"), fleet=fleet, policy=POLICY)
    assert d.rule == "privacy.pseudonymized" and not d.surrogates_if_failed


def test_the_fallback_keeps_residency_and_health() -> None:
    policy = PlacementPolicy(PolicyConfig(  # type: ignore[arg-type]
        residency={"eu": ["eu-central-1", "device"], "home": ["device"]},
        privacy={"pseudonymize": LISTED}))
    facts = _chat("mail bob@example.com")
    fleet = _fleet()
    f = _fallback(facts, fleet, Hints(region="eu"), policy)
    assert [e.name for e in f.order] == ["cloud-eu"]
    assert _fallback(facts, fleet, Hints(region="home"), policy) is None  # no cloud allowed
    _down(fleet[2])
    assert [e.name for e in _fallback(facts, fleet).order] == ["cloud-eu"]
    _down(fleet[1])
    assert _fallback(facts, fleet) is None  # every cloud's breaker open
    assert _fallback(facts, [fleet[0]]) is None  # no cloud at all


def test_personal_data_beside_an_image_never_leaves_as_surrogates() -> None:
    """With `images: allow`, an image may leave the edge, but not beside listed personal data:
    the screenshot may show the same e-mail address and would tie the surrogate to it."""
    policy = PlacementPolicy(PolicyConfig(
        privacy={"pseudonymize": LISTED, "images": "allow"}))  # type: ignore[arg-type]
    fleet = [_ep("edge", "edge", "device", ["text", "vision"]), *_fleet()[1:]]
    _down(fleet[0])
    with pytest.raises(NoAllowedEndpoint) as err:
        _choose(_chat("mail bob@example.com", image=True), Hints(), fleet, policy=policy)
    assert err.value.rule == "privacy.pii.email"
    # Without the personal data the image leaves as the setting allows.
    d = _choose(_chat("what is on screen", image=True), Hints(), fleet, policy=policy)
    assert d.order and all(e.config.tier == "cloud" for e in d.order)
