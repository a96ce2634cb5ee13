"""The pure placement policy, breaker and latency estimator, tested directly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.gateway.config import EndpointConfig, GatewayConfig, PolicyConfig
from edgecloud.gateway.errors import CapabilityMissing, NoAllowedEndpoint
from edgecloud.gateway.health import (
    PASS,
    REFUSED,
    BreakerState,
    CircuitBreaker,
    EndpointState,
    LatencyEstimator,
)
from edgecloud.gateway.policy import Hints, PlacementPolicy
from edgecloud.gateway.request import inspect_chat


def _ep(name: str, tier: str, region: str, caps: list[str] | None = None, **kw: Any
        ) -> EndpointState:
    cfg = EndpointConfig(name=name, tier=tier, url=f"http://127.0.0.1:1/{name}/v1",  # type: ignore[arg-type]
                         region=region, capabilities=caps or ["text"], **kw)
    return EndpointState(cfg, CircuitBreaker(2, 1.0))


def _fleet() -> list[EndpointState]:
    return [
        _ep("edge", "edge", "device", max_concurrency=2),
        _ep("cloud-eu", "cloud", "eu-central-1", ["text", "vision"],
            price={"input_per_mtok": 0.5, "output_per_mtok": 1.5}),
        _ep("cloud-us", "cloud", "us-east-1", ["text", "vision"],
            price={"input_per_mtok": 0.2, "output_per_mtok": 0.6}, context=100_000),
    ]


POLICY = PlacementPolicy(PolicyConfig(residency={"eu": ["eu-central-1", "device"]}))


def _chat(text: str = "hello", image: bool = False, **extra: Any) -> Any:
    content: Any = text
    if image:
        content = [{"type": "text", "text": text},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]
    return inspect_chat({"model": "x", "messages": [{"role": "user", "content": content}],
                         **extra})


def _choose(facts: Any, hints: Hints | None = None, fleet: list[EndpointState] | None = None,
            policy: PlacementPolicy = POLICY, now: float = 0.0, spend: float = 0.0) -> Any:
    return policy.choose_endpoint(facts, hints or Hints(), fleet or _fleet(), now, spend)


def test_public_text_goes_to_the_cheapest_endpoint() -> None:
    d = _choose(_chat("Write a haiku about rain"))
    assert d.primary.name == "edge" and d.rule == "cost"
    assert [e.name for e in d.order] == ["edge", "cloud-us", "cloud-eu"]


@pytest.mark.parametrize(("text", "rule"), [
    ("我的手机号是13812345678", "privacy.pii.phone"),
    ("身份证 11010519491231002X", "privacy.pii.id_card"),
    ("write to anna@example.org", "privacy.pii.email"),
])
def test_personal_data_keeps_the_request_on_the_edge(text: str, rule: str) -> None:
    d = _choose(_chat(text), Hints(pinned="cloud"))
    assert d.rule == rule and [e.name for e in d.order] == ["edge"] and d.restricted


def test_private_header_and_key_default() -> None:
    assert _choose(_chat(), Hints(sensitivity="private")).rule == "privacy.header"
    assert _choose(_chat(), Hints(sensitivity="private", sensitivity_from_key=True)
                   ).rule == "privacy.key"


def test_images_follow_the_image_rule() -> None:
    fleet = _fleet()
    fleet[0] = _ep("edge", "edge", "device", ["text", "vision"])
    d = _choose(_chat("what is on screen", image=True), fleet=fleet)
    assert d.rule == "privacy.image" and [e.name for e in d.order] == ["edge"]
    allow = PlacementPolicy(PolicyConfig(privacy={"images": "allow"}))  # type: ignore[arg-type]
    d = _choose(_chat("what is on screen", image=True), policy=allow)
    assert d.rule == "capability.vision" and {e.name for e in d.order} == {"cloud-eu", "cloud-us"}


def test_image_for_an_edge_without_vision_is_a_clear_400() -> None:
    with pytest.raises(CapabilityMissing) as exc:
        _choose(_chat("screen", image=True))
    assert exc.value.status == 400 and exc.value.rule == "capability.vision"


def test_residency_limits_regions_and_fails_closed() -> None:
    d = _choose(_chat(), Hints(region="eu"))
    assert {e.name for e in d.order} == {"edge", "cloud-eu"}
    fleet = _fleet()
    for e in fleet[:2]:
        e.breaker.failure(0.0)
        e.breaker.failure(0.0)
    with pytest.raises(NoAllowedEndpoint) as exc:
        _choose(_chat(), Hints(region="eu"), fleet, now=0.5)
    assert exc.value.rule == "residency.eu" and exc.value.status == 503


def test_unknown_region_tag_allows_only_its_own_region() -> None:
    with pytest.raises(NoAllowedEndpoint) as exc:
        _choose(_chat(), Hints(region="cn"))
    assert exc.value.rule == "residency.cn"


def test_private_request_with_edge_down_is_refused_not_sent_to_cloud() -> None:
    fleet = _fleet()
    fleet[0].healthy = False
    fleet[0].breaker.failure(0.0)
    fleet[0].breaker.failure(0.0)
    with pytest.raises(NoAllowedEndpoint) as exc:
        _choose(_chat("my mail is a@b.io"), fleet=fleet, now=0.5)
    assert exc.value.rule == "privacy.pii.email" and "not sent anywhere else" in exc.value.message
    # A public request in the same state moves to the cloud.
    assert _choose(_chat("hello"), fleet=fleet, now=0.5).primary.tier == "cloud"


def test_context_capability() -> None:
    long_text = "word " * 20_000  # ~28k tokens
    fleet = [_ep("edge", "edge", "device", context=2048),
             _ep("cloud", "cloud", "us", context=100_000)]
    d = _choose(_chat(long_text), fleet=fleet)
    assert d.rule == "capability.context" and d.primary.name == "cloud"
    with pytest.raises(CapabilityMissing) as exc:
        _choose(_chat(long_text), fleet=fleet[:1])
    assert exc.value.code == "context_length_exceeded"


def test_pin_is_honoured_within_policy() -> None:
    d = _choose(_chat(), Hints(pinned="cloud"))
    assert d.rule == "pinned" and d.primary.tier == "cloud"


def test_deadline_prefers_an_endpoint_predicted_to_meet_it() -> None:
    fleet = _fleet()
    fleet[0].latency = LatencyEstimator(ttft_s=0.5, per_token_s=0.05)   # ~13 s for 256 tokens
    fleet[1].latency = LatencyEstimator(ttft_s=0.2, per_token_s=0.01)
    fleet[2].latency = LatencyEstimator(ttft_s=0.3, per_token_s=0.02)
    d = _choose(_chat(), Hints(deadline_ms=4000), fleet)
    assert d.rule == "deadline" and d.primary.name == "cloud-eu"
    assert _choose(_chat(), Hints(deadline_ms=60_000), fleet).primary.name == "edge"


def test_busy_edge_offloads_and_returns_when_drained() -> None:
    fleet = _fleet()
    fleet[0].in_flight = 5  # max_concurrency 2 + 3 waiting > edge_queue_above 2
    d = _choose(_chat(), fleet=fleet)
    assert d.rule == "load.offload" and d.primary.tier == "cloud"
    assert d.order[-1].name == "edge"  # still a fallback
    fleet[0].in_flight = 1
    assert _choose(_chat(), fleet=fleet).primary.name == "edge"


def test_cloud_budget() -> None:
    policy = PlacementPolicy(PolicyConfig(budget={"monthly_cloud_usd": 10}))  # type: ignore[arg-type]
    fleet = _fleet()
    fleet[0].in_flight = 5
    assert _choose(_chat(), fleet=fleet, policy=policy, spend=3).primary.tier == "cloud"
    d = _choose(_chat(), fleet=fleet, policy=policy, spend=10)
    assert d.primary.tier == "edge"


def test_open_breaker_takes_an_endpoint_out_until_half_open() -> None:
    fleet = _fleet()
    fleet[0].breaker.failure(0.0)
    fleet[0].breaker.failure(0.0)
    assert _choose(_chat(), fleet=fleet, now=0.5).primary.name != "edge"
    assert _choose(_chat(), fleet=fleet, now=1.5).primary.name == "edge"


def test_breaker_state_machine() -> None:
    b = CircuitBreaker(failures=2, open_s=1.0)
    b.failure(0.0)
    assert b.state is BreakerState.CLOSED and b.acquire(0.0)
    b.failure(0.1)
    assert b.state is BreakerState.OPEN and not b.acquire(0.5)
    assert b.acquire(1.2) and b.state is BreakerState.HALF_OPEN
    assert not b.acquire(1.2)  # one trial at a time
    b.failure(1.3)
    assert b.state is BreakerState.OPEN and not b.allows(1.4)
    assert b.acquire(2.4)
    b.success()
    assert b.state is BreakerState.CLOSED and b.acquire(2.5)


def test_breaker_trial_is_released_without_a_verdict() -> None:
    b = CircuitBreaker(failures=1, open_s=1.0, trial_s=10.0)
    b.failure(0.0)
    ticket = b.acquire(1.0)
    assert ticket > PASS and b.state is BreakerState.HALF_OPEN and b.acquire(1.1) == REFUSED
    b.release(ticket)  # the trial's client left, or the gateway failed: no verdict
    assert b.allows(1.2) and b.state is BreakerState.HALF_OPEN
    again = b.acquire(1.2)
    assert again > ticket
    b.release(ticket)  # a stale release frees nothing
    assert not b.allows(1.3)
    b.success()
    b.release(again)  # a release after the verdict changes nothing
    assert b.state is BreakerState.CLOSED and b.acquire(1.4) == PASS


def test_breaker_trial_has_a_deadline() -> None:
    b = CircuitBreaker(failures=1, open_s=1.0, trial_s=5.0)
    b.failure(0.0)
    first = b.acquire(1.0)
    assert first > PASS and not b.allows(5.9) and b.acquire(5.9) == REFUSED
    assert b.allows(6.0)  # the trial outlived its deadline: the next request takes over
    second = b.acquire(6.0)
    assert second > first
    b.release(first)  # the old trial ending late does not free the new one
    assert b.acquire(6.1) == REFUSED
    b.failure(6.2)  # the new trial failed: open again
    assert b.state is BreakerState.OPEN and not b.allows(6.5)


def test_a_passing_probe_ends_a_stale_trial_but_not_a_live_one() -> None:
    b = CircuitBreaker(failures=1, open_s=1.0, trial_s=5.0)
    b.failure(0.0)
    b.probe_passed(0.5)  # still within the breaker's wait
    assert b.state is BreakerState.OPEN
    assert b.acquire(1.0) > PASS
    b.probe_passed(2.0)  # a trial is in flight and within its deadline: it decides
    assert b.state is BreakerState.HALF_OPEN
    b.probe_passed(6.5)
    assert b.state is BreakerState.CLOSED and b.acquire(6.5) == PASS


def test_panic_mode_tries_allowed_endpoints_marked_down_and_only_them() -> None:
    fleet = _fleet()
    fleet[0].healthy = False  # the edge's last probe failed (it was still starting)
    d = _choose(_chat("my mail is a@b.io"), fleet=fleet)
    assert d.panic and [e.name for e in d.order] == ["edge"] and d.rule == "privacy.pii.email"
    fleet[1].healthy = False
    d = _choose(_chat(), Hints(region="eu"), fleet)
    assert d.panic and {e.name for e in d.order} == {"edge", "cloud-eu"}
    assert not _choose(_chat("hello"), fleet=fleet).panic  # cloud-us is up: no panic
    fleet[0].breaker.failure(0.0)
    fleet[0].breaker.failure(0.0)  # an open breaker still holds the edge back
    with pytest.raises(NoAllowedEndpoint) as exc:
        _choose(_chat("my mail is a@b.io"), fleet=fleet, now=0.5)
    assert exc.value.rule == "privacy.pii.email" and "not sent anywhere else" in exc.value.message


def test_latency_estimator() -> None:
    est = LatencyEstimator(alpha=0.5)
    est.observe_stream(ttft_s=0.1, total_s=1.1, tokens=11)
    assert est.ttft_s == pytest.approx(0.1) and est.per_token_s == pytest.approx(0.1)
    est.observe_stream(ttft_s=0.3, total_s=0.3, tokens=1)
    assert est.ttft_s == pytest.approx(0.2)
    est.observe_rtt(0.01)
    assert est.predict_s(10) == pytest.approx(0.01 + 0.2 + 1.0)
    assert est.predict_s(10, queued=1) == pytest.approx(0.01 + 2 * 1.2)


# -- property: nothing private or residency-bound ever lands on a disallowed endpoint ---------

PII = ["我的手机号是13812345678", "身份证 11010519491231002X", "mail a@b.io",
       "card 4111 1111 1111 1111", "IBAN DE89 3704 0044 0532 0130 00", "host 10.0.0.7",
       "token: sk-abcdefghijklmnopqrstuvwx"]
PLAIN = ["hello", "打开微信", "write a poem about the sea", "明天下午三点开会", "2 + 2 = ?"]


@settings(max_examples=1500, deadline=None, database=None)
@given(
    pieces=st.lists(st.sampled_from(PII + PLAIN), min_size=1, max_size=4),
    region=st.sampled_from([None, "eu", "us", "cn"]),
    sensitivity=st.sampled_from([None, "public", "private"]),
    pinned=st.sampled_from([None, "edge", "cloud"]),
    healthy=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    in_flight=st.integers(0, 8),
    image=st.booleans(),
)
def test_property_never_to_a_disallowed_endpoint(
    pieces: list[str], region: str | None, sensitivity: str | None, pinned: str | None,
    healthy: tuple[bool, bool, bool], in_flight: int, image: bool,
) -> None:
    fleet = _fleet()
    fleet[0] = _ep("edge", "edge", "device", ["text", "vision"], max_concurrency=2)
    for e, h in zip(fleet, healthy, strict=True):
        e.healthy = h
    fleet[0].in_flight = in_flight
    policy = PlacementPolicy(PolicyConfig(residency={"eu": ["eu-central-1", "device"],
                                                     "us": ["us-east-1", "device"]}))
    facts = _chat(" ".join(pieces), image=image)
    private = (any(p in PII for p in pieces) or sensitivity == "private" or image)
    allowed_regions = {"eu": {"eu-central-1", "device"}, "us": {"us-east-1", "device"},
                       "cn": {"cn"}, None: None}[region]
    try:
        d = policy.choose_endpoint(facts, Hints(region, sensitivity, False, None, pinned),
                                   fleet, 0.0)
    except (NoAllowedEndpoint, CapabilityMissing):
        return
    assert d.panic == (not any(e.healthy for e in d.order))
    for e in d.order:
        assert e.healthy or d.panic
        if private:
            assert e.config.tier == "edge", (pieces, d.rule)
        if allowed_regions is not None:
            assert e.config.region in allowed_regions


def test_config_defaults_are_safe() -> None:
    cfg = GatewayConfig(endpoints=[EndpointConfig(name="e", tier="edge", url="http://x:1/v1")])
    assert cfg.policy.privacy.images == "edge_only"
    assert set(cfg.policy.privacy.detect) >= {"email", "phone", "id_card", "bank_card", "secret"}


def _down(fleet: list[EndpointState]) -> list[EndpointState]:
    for e in fleet:
        e.healthy = False
        e.breaker.failure(0.0)
        e.breaker.failure(0.0)
    return fleet


@pytest.mark.parametrize(("text", "hints", "fleet", "rule", "message"), [
    ("hi", Hints(sensitivity="private"), lambda: _fleet()[1:], "privacy.header",
     "private request, and no edge endpoint exists"),
    ("hi", Hints(region="cn"), _fleet, "residency.cn",
     "no allowed endpoint is in a region permitted for 'cn' (cn)"),
    ("hi", Hints(), lambda: _down(_fleet()), "fallback",
     "no endpoint is healthy (edge, cloud-eu, cloud-us unavailable)"),
    ("a@b.io", Hints(), lambda: _down(_fleet()), "privacy.pii.email",
     "no healthy endpoint may take this request (edge unavailable); it was not sent anywhere "
     "else"),
    ("hi", Hints(region="eu"), lambda: _down(_fleet()), "residency.eu",
     "no healthy endpoint may take this request (edge, cloud-eu unavailable); it was not sent "
     "anywhere else"),
])
def test_each_refusal_names_its_rule_and_says_why(text: str, hints: Hints, fleet: Any,
                                                  rule: str, message: str) -> None:
    # Pins what placement answers when nothing may take a request, rule and message alike.
    with pytest.raises(NoAllowedEndpoint) as exc:
        _choose(_chat(text), hints, fleet(), now=0.5)
    assert (exc.value.rule, exc.value.message) == (rule, f"{rule}: {message}")
    assert exc.value.status == 503
