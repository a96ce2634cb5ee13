"""An endpoint whose config does not list capabilities reads what its /v1/models reports."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from edgecloud.gateway.config import EndpointConfig, PolicyConfig
from edgecloud.gateway.errors import CapabilityMissing
from edgecloud.gateway.health import REDISCOVER_S, CircuitBreaker, EndpointState
from edgecloud.gateway.policy import Hints, PlacementPolicy
from edgecloud.gateway.request import inspect_chat
from edgecloud.gateway.upstream import Upstream

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


class _ModelServer:
    """A stand-in model server (plays a remote node): /readyz and a /v1/models whose answer
    the test changes, as a hot swap on the node would."""

    def __init__(self) -> None:
        self.capabilities = ["text", "vision"]
        self.model = "gemma-3-270m"
        self.models_reads = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                path = head.split(b" ", 2)[1]
                body = b"{}"
                if path == b"/v1/models":
                    self.models_reads += 1
                    body = orjson.dumps({"object": "list", "data": [
                        {"id": self.model, "object": "model", "capabilities": self.capabilities}]})
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)


def test_a_hot_swap_that_drops_the_projector_is_noticed() -> None:
    """Capabilities and model id are read again after REDISCOVER_S and whenever the endpoint
    comes back, so a node swapped to a text-only model stops getting screenshots."""
    asyncio.run(_hot_swap())


async def _hot_swap() -> None:
    server = _ModelServer()
    async with server as url:
        cfg = EndpointConfig(name="edge", tier="edge", url=url)
        state = EndpointState(cfg, CircuitBreaker(2, 1.0))
        up = Upstream(state)
        await up.start()
        try:
            assert await up.probe()
            assert state.capabilities == ("text", "vision") and state.model_id == "gemma-3-270m"
            assert await up.probe()
            assert server.models_reads == 1  # not on every probe

            server.capabilities, server.model = ["text"], "gemma-3-270m-v2"
            state.discovered_at -= REDISCOVER_S  # the interval passed
            assert await up.probe()
            assert state.capabilities == ("text",) and state.model_id == "gemma-3-270m-v2"
            with pytest.raises(CapabilityMissing):
                POLICY.choose_endpoint(_image_request(), Hints(), [state], 0.0, 0.0)

            server.capabilities = ["text", "vision"]
            state.healthy = False  # it went down and comes back: read at once
            assert await up.probe()
            assert state.capabilities == ("text", "vision") and server.models_reads == 3
        finally:
            await up.close()
