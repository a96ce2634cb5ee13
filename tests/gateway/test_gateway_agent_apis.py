"""Responses, Messages and embeddings through a real gateway: one policy chain for every API.

A real node (with an API key the gateway sends) plays the edge; a recording, echoing stand-in
plays the cloud. The privacy cases are the chat ones again in each API's shape: what is private
never reaches the cloud link, and a request that cannot stay on the edge gets the API's own error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from edgecloud.supervise import free_port
from tests.conftest import serve_node
from tests.gateway.gwrig import Gateway, Standin, endpoint, fast_limits, png_data_uri

KEY = "edge-node-key"
EMAIL = "li.wei@example.com"
PHONE = "+1 415-555-2671"
ID_CARD = "11010519491231002X"
HTTP = httpx.Client(timeout=120)


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real node that requires an API key (EDGE_NODE_KEY)."""
    yield from serve_node(tmp_path_factory.mktemp("keyed-node"), "--parallel", "2", "--ctx",
                          "2048", "--api-key-env", "EDGE_NODE_KEY", name="keyed-node",
                          env={"EDGE_NODE_KEY": KEY})


def _down() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


def _config(edge_url: str, cloud: Standin, **privacy: Any) -> dict[str, Any]:
    edge = endpoint("edge-box", "edge", edge_url, api_key_env="EDGE_NODE_KEY")
    del edge["capabilities"]  # learnt from the node's /v1/models, with its APIs
    return {"endpoints": [edge, endpoint("cloud-eu", "cloud", cloud.v1)],
            "policy": {"privacy": privacy}, "limits": fast_limits()}


@pytest.fixture
def echo_cloud(start_standin: Callable[..., Standin]) -> Standin:
    cloud = start_standin("cloud-eu", "cloud-model")
    cloud.control(echo=True)
    return cloud


def _gateway(start_gateway: Callable[..., Gateway], config: dict[str, Any]) -> Gateway:
    return start_gateway(config, env={"EDGE_NODE_KEY": KEY})


def _received(cloud: Standin) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = HTTP.get(cloud.base + "/_received").json()
    HTTP.delete(cloud.base + "/_received")
    return out


# -- through to the real node -----------------------------------------------------------------
def test_every_api_reaches_the_keyed_node(keyed_node: str, echo_cloud: Standin,
                                          start_gateway: Callable[..., Gateway]) -> None:
    gw = _gateway(start_gateway, _config(f"{keyed_node}/v1", echo_cloud))
    pin = {"x-edgecloud-placement": "edge"}
    oai = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=120,
                        default_headers=pin)
    # Greedy throughout: a sampled answer of a base model may hold no text at all.
    raw = oai.responses.with_raw_response.create(model="auto", input="Hello", max_output_tokens=4,
                                                 temperature=0)
    assert raw.headers["x-edgecloud-endpoint"] == "edge-box"
    r = raw.parse()
    assert r.object == "response" and r.output_text and r.usage is not None
    with oai.responses.stream(model="auto", input="Count: one,", max_output_tokens=6,
                              temperature=0) as stream:
        kinds = [e.type for e in stream]
    assert kinds[0] == "response.created"
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds

    claude = anthropic.Anthropic(base_url=gw.base, api_key="unused", max_retries=0, timeout=120,
                                 default_headers=pin)
    m = claude.messages.create(model="auto", max_tokens=4, extra_body={"temperature": 0},
                               messages=[{"role": "user", "content": "Hi"}])
    assert m.type == "message" and m.content[0].type == "text"
    with claude.messages.stream(model="auto", max_tokens=4, extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": "Hi"}]) as mstream:
        final = mstream.get_final_message()
    assert final.usage.output_tokens > 0
    count = claude.messages.count_tokens(model="auto",
                                         messages=[{"role": "user", "content": "Hi"}])
    assert count.input_tokens == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)

    # Embeddings: only the node serves them (its /v1/models says so), so the cloud is not
    # a candidate even without the pin.
    e = oai.embeddings.with_raw_response.create(model="auto", input=["a", "b"],
                                               extra_headers={"x-edgecloud-placement": "cloud"})
    assert e.headers["x-edgecloud-endpoint"] == "edge-box"
    assert len(e.parse().data) == 2 and len(e.parse().data[0].embedding) == 640
    assert _received(echo_cloud) == []


def test_an_agent_run_with_one_function_tool(keyed_node: str, echo_cloud: Standin,
                                             start_gateway: Callable[..., Gateway]) -> None:
    """The OpenAI Agents SDK through the gateway: the node answers with a forced call, the
    tool runs, and its result ends the run (a base model's free text would run to the token
    limit, which the SDK treats as a failed turn)."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # the SDK's own traces would go to OpenAI
    gw = _gateway(start_gateway, _config(f"{keyed_node}/v1", echo_cloud))
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return "sunny"

    client = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=120,
                                default_headers={"x-edgecloud-placement": "edge"})
    agent = Agent(name="weather", instructions="Use the tool.", tools=[get_weather],
                  model=OpenAIResponsesModel("auto", client),
                  model_settings=ModelSettings(tool_choice="get_weather", max_tokens=64,
                                                 temperature=0),  # greedy: a short call
                  tool_use_behavior="stop_on_first_tool")
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=3)
    assert len(calls) == 1 and isinstance(calls[0], str)
    assert result.final_output == "sunny"
    assert _received(echo_cloud) == []


# -- privacy in each API's shape ---------------------------------------------------------------
def _responses(text: str, where: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "input": "Summarise, please."}
    if where == "instructions":
        body["instructions"] = f"The user is {text}."
    elif where == "input":
        body["input"] = [{"role": "user", "content": [{"type": "input_text", "text": text}]}]
    elif where == "tool_output":
        body["input"] = [{"role": "user", "content": "Look it up."},
                         {"type": "function_call", "call_id": "c1", "name": "lookup",
                          "arguments": "{}"},
                         {"type": "function_call_output", "call_id": "c1", "output": text}]
    return body


def _messages(text: str, where: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "max_tokens": 16,
                            "messages": [{"role": "user", "content": "Summarise, please."}]}
    if where == "system":
        body["system"] = [{"type": "text", "text": f"The user is {text}."}]
    elif where == "content":
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    elif where == "tool_result":
        body["messages"] = [
            {"role": "user", "content": "Look it up."},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup",
                                               "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": [{"type": "text", "text": text}]}]}]
    return body


CASES = [
    ("/v1/responses", _responses(EMAIL, "instructions"), "privacy.pii.email"),
    ("/v1/responses", _responses(PHONE, "input"), "privacy.pii.phone"),
    ("/v1/responses", _responses(ID_CARD, "tool_output"), "privacy.pii.id_card"),
    ("/v1/messages", _messages(EMAIL, "system"), "privacy.pii.email"),
    ("/v1/messages", _messages(PHONE, "content"), "privacy.pii.phone"),
    ("/v1/messages", _messages(ID_CARD, "tool_result"), "privacy.pii.id_card"),
    ("/v1/embeddings", {"model": "m", "input": ["fine", f"mail {EMAIL}"]}, "privacy.pii.email"),
    ("/v1/embeddings", {"model": "m", "input": [[1, 2, 3]]}, "privacy.token_ids"),
    ("/v1/messages/count_tokens", _messages(PHONE, "system"), "privacy.pii.phone"),
]


@pytest.mark.parametrize(("path", "body", "rule"), CASES)
@pytest.mark.parametrize("stream", [False, True])
def test_private_data_with_no_edge_gets_the_apis_error(
    path: str, body: dict[str, Any], rule: str, stream: bool, echo_cloud: Standin,
    start_gateway: Callable[..., Gateway],
) -> None:
    if stream and path in ("/v1/embeddings", "/v1/messages/count_tokens"):
        pytest.skip("no stream on this route")
    config = _config(_down(), echo_cloud)
    for e in config["endpoints"]:  # both could serve it: only privacy decides
        e["apis"] = ["chat.completions", "messages", "embeddings"]
    gw = _gateway(start_gateway, config)
    r = HTTP.post(gw.base + path, json={**body, **({"stream": True} if stream else {})})
    assert r.status_code == 503, r.text
    assert r.headers["x-edgecloud-reason"] == rule
    if path.startswith("/v1/messages"):
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "overloaded_error"
    else:
        assert r.json()["error"]["code"] == "no_allowed_endpoint"
    assert _received(echo_cloud) == []  # zero bytes of it on the cloud link


def test_images_count_as_images_in_each_shape(echo_cloud: Standin,
                                              start_gateway: Callable[..., Gateway]) -> None:
    config = _config(_down(), echo_cloud)
    config["endpoints"][0]["capabilities"] = ["text", "vision"]
    gw = _gateway(start_gateway, config)
    uri = png_data_uri(20_000)
    media, data = uri[5:].split(";base64,")
    bodies = [
        ("/v1/responses", {"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": uri}]}]}),
        ("/v1/messages", {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}]}]}),
    ]
    for path, body in bodies:
        r = HTTP.post(gw.base + path, json=body)
        assert r.status_code == 503 and r.headers["x-edgecloud-reason"] == "privacy.image", r.text
    assert _received(echo_cloud) == []


def _client_text(path: str, r: httpx.Response, stream: bool) -> str:
    """What the client assembles: output text (or call arguments) in the API's shape."""
    if not stream:
        obj = r.json()
        if path == "/v1/responses":
            return "".join(p["text"] for o in obj["output"] if o["type"] == "message"
                           for p in o["content"])
        return "".join(b.get("text", "") for b in obj["content"])
    out = []
    for event in r.text.split("\n\n"):
        data = next((line[5:].strip() for line in event.split("\n")
                     if line.startswith("data:")), "")
        if not data:
            continue
        obj = json.loads(data)
        if obj.get("type") == "response.output_text.delta":
            out.append(obj["delta"])
        elif obj.get("type") == "content_block_delta":
            out.append(obj["delta"].get("text", ""))
    return "".join(out)


PSEUDO = [
    ("/v1/responses", _responses(EMAIL, "instructions"), EMAIL),
    ("/v1/responses", _responses(PHONE, "tool_output"), PHONE),
    ("/v1/messages", _messages(EMAIL, "system"), EMAIL),
    ("/v1/messages", _messages(ID_CARD, "tool_result"), ID_CARD),
]


@pytest.mark.parametrize(("path", "body", "value"), PSEUDO)
@pytest.mark.parametrize("stream", [False, True])
def test_surrogates_leave_and_the_client_gets_its_text_back(
    path: str, body: dict[str, Any], value: str, stream: bool, echo_cloud: Standin,
    start_gateway: Callable[..., Gateway],
) -> None:
    gw = _gateway(start_gateway, _config(
        _down(), echo_cloud, pseudonymize=["email", "phone", "id_card"]))
    r = HTTP.post(gw.base + path, json={**body, "stream": stream})
    assert r.status_code == 200, r.text
    assert r.headers["x-edgecloud-placement"] == "cloud"
    sent = _received(echo_cloud)
    assert len(sent) == 1
    assert value not in sent[0]["raw"] and value not in json.dumps(sent[0]["texts"])
    assert value in _client_text(path, r, stream)  # restored, streamed or whole


def test_chat_only_endpoints_take_translated_requests(echo_cloud: Standin,
                                                      start_gateway: Callable[..., Gateway]
                                                      ) -> None:
    """A cloud that speaks only chat completions gets the faithful chat translation."""
    gw = _gateway(start_gateway, _config(_down(), echo_cloud))
    body = _messages("hello there", "content")
    body["system"] = "Be brief."
    body["stop_sequences"] = ["END"]
    body["tools"] = [{"name": "lookup", "description": "Find", "input_schema": {
        "type": "object", "properties": {"q": {"type": "string"}}}}]
    body["tool_choice"] = {"type": "tool", "name": "lookup"}
    r = HTTP.post(gw.base + "/v1/messages", json=body)
    assert r.status_code == 200, r.text
    sent = json.loads(_received(echo_cloud)[0]["raw"])
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["stop"] == ["END"] and sent["max_completion_tokens"] == 16
    assert sent["tools"][0]["function"]["name"] == "lookup"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    msg = r.json()
    assert msg["stop_reason"] == "tool_use" and msg["content"][0]["type"] == "tool_use"


def test_embeddings_need_an_endpoint_that_serves_them(echo_cloud: Standin,
                                                      start_gateway: Callable[..., Gateway]
                                                      ) -> None:
    config = {"endpoints": [endpoint("cloud-eu", "cloud", echo_cloud.v1)],
              "limits": fast_limits()}
    gw = _gateway(start_gateway, config)
    r = HTTP.post(gw.v1 + "/embeddings", json={"model": "m", "input": "public text"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_api"
    assert r.headers["x-edgecloud-reason"] == "capability.embeddings"
    bad = HTTP.post(gw.v1 + "/messages", json={"model": "m", "messages": []})
    assert bad.status_code == 400 and bad.json()["type"] == "error"


def test_anthropic_clients_authenticate_with_x_api_key(
    echo_cloud: Standin, start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    import hashlib

    digest = hashlib.sha256(b"client-key").hexdigest()
    config = _config(_down(), echo_cloud)
    config["auth"] = {"keys": [{"name": "team", "sha256": digest}]}
    gw = _gateway(start_gateway, config)
    body = _messages("hi", "content")
    assert HTTP.post(gw.base + "/v1/messages", json=body).status_code == 401
    ok = HTTP.post(gw.base + "/v1/messages", json=body, headers={"x-api-key": "client-key"})
    assert ok.status_code == 200, ok.text


