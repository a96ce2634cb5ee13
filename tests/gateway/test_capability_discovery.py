"""An endpoint whose config does not list capabilities reads what its /v1/models reports."""

from __future__ import annotations

from typing import Any

import pytest

from edgecloud.gateway.config import EndpointConfig, PolicyConfig
from edgecloud.gateway.errors import CapabilityMissing
from edgecloud.gateway.health import CircuitBreaker, EndpointState
from edgecloud.gateway.policy import Hints, PlacementPolicy
from edgecloud.gateway.request import inspect_chat

POLICY = PlacementPolicy(PolicyConfig())


def _edge(caps: list[str] | None, discovered: tuple[str, ...] | None) -> EndpointState:
    cfg = EndpointConfig(name="edge", tier="edge", url="http://127.0.0.1:1/v1", capabilities=caps)
    state = EndpointState(cfg, CircuitBreaker(2, 1.0))
    state.discovered_capabilities = discovered
    return state


def _image_request() -> Any:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}
    content = [{"type": "text", "text": "what is on screen"}, image]
    return inspect_chat({"model": "x", "messages": [{"role": "user", "content": content}]})


def test_reported_vision_takes_the_screenshot_on_the_edge() -> None:
    edge = _edge(None, ("text", "vision"))
    edge.model_id = "m"
    assert edge.capabilities == ("text", "vision") and not edge.needs_discovery
    d = POLICY.choose_endpoint(_image_request(), Hints(), [edge], 0.0, 0.0)
    assert [e.name for e in d.order] == ["edge"]


@pytest.mark.parametrize(
    ("caps", "discovered"), [(["text"], ("text", "vision")), (None, None), (None, ())]
)
def test_config_wins_and_silence_means_text(
    caps: list[str] | None, discovered: tuple[str, ...] | None
) -> None:
    edge = _edge(caps, discovered)
    assert edge.capabilities == ("text",)
    with pytest.raises(CapabilityMissing):
        POLICY.choose_endpoint(_image_request(), Hints(), [edge], 0.0, 0.0)
