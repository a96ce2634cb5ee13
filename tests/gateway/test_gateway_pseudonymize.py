"""Private requests through a real gateway whose edge is down: surrogates go to a recording,
echoing stand-in cloud provider, and the client gets its own text back, streamed or not."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud.supervise import free_port
from tests.gateway.gwrig import Gateway, Standin, endpoint, fast_limits
from tests.gateway.pii_samples import compact, text_with_pii

LISTED = ["email", "phone", "id_card", "bank_card", "iban", "ip"]


def _config(cloud: Standin, edge_url: str | None = None,
            pseudonymize: list[str] | None = None) -> dict[str, Any]:
    edge = edge_url or f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: down
    privacy = {} if pseudonymize is None else {"pseudonymize": pseudonymize}
    return {"endpoints": [endpoint("edge-box", "edge", edge),
                          endpoint("cloud-eu", "cloud", cloud.v1)],
            "policy": {"privacy": privacy}, "limits": fast_limits()}


# One client for the whole module: a new one per call costs more than the request.
HTTP = httpx.Client(timeout=30)


@pytest.fixture
def rig(start_standin: Callable[..., Standin], start_gateway: Callable[..., Gateway]
        ) -> tuple[Standin, Gateway]:
    cloud = start_standin("cloud-eu", "cloud-model")
    cloud.control(echo=True)
    return cloud, start_gateway(_config(cloud, pseudonymize=LISTED))


def _received(cloud: Standin) -> list[dict[str, Any]]:
    """What the stand-in received since the last call (then forgotten)."""
    out: list[dict[str, Any]] = HTTP.get(cloud.base + "/_received").json()
    HTTP.delete(cloud.base + "/_received")
    return out


def _body(route: str, texts: list[str], stream: bool) -> dict[str, Any]:
    if route == "completions":
        return {"model": "m", "prompt": "\n".join(texts), "stream": stream}
    if route == "tools":
        msgs: list[dict[str, Any]] = [{"role": "user", "content": texts[0]}]
        for i, t in enumerate(texts[1:]):
            msgs.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": "echo", "arguments": t}}]})
        return {"model": "m", "messages": msgs, "stream": stream, "tools": [
            {"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}]}
    return {"model": "m", "stream": stream, "messages": [
        {"role": "system" if i == 0 and len(texts) > 1 else "user", "content": t}
        for i, t in enumerate(texts)]}


def _answer_text(resp: httpx.Response, stream: bool) -> str:
    """The text the client assembles from the answer (content, tool-call arguments or text)."""
    def of(choice: dict[str, Any], key: str) -> str:
        if "text" in choice:
            return choice["text"] or ""
        part = choice.get(key) or {}
        calls = part.get("tool_calls") or []
        return (part.get("content") or "") + "".join(
            c.get("function", {}).get("arguments") or "" for c in calls)

    if not stream:
        return of(resp.json()["choices"][0], "message")
    out = []
    for event in resp.content.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                out.append(of(choice, "delta"))
    return "".join(out)


def _post(gw: Gateway, route: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    path = "/v1/completions" if route == "completions" else "/v1/chat/completions"
    return HTTP.post(gw.base + path, json=body, headers=headers)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(samples=st.lists(text_with_pii(), min_size=1, max_size=3),
       route=st.sampled_from(["chat", "tools", "completions"]), stream=st.booleans())
def test_the_client_gets_its_text_back_and_the_cloud_never_sees_a_value(
    rig: tuple[Standin, Gateway], samples: list[tuple[str, list[str]]], route: str,
    stream: bool,
) -> None:
    cloud, gw = rig
    texts = [t for t, _ in samples]
    resp = _post(gw, route, _body(route, texts, stream))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-edgecloud-reason"] == "privacy.pseudonymized"
    assert resp.headers["x-edgecloud-placement"] == "cloud"
    assert _answer_text(resp, stream) == "\n".join(texts)
    received = _received(cloud)
    assert len(received) == 1
    sent = received[0]["raw"]
    for _, values in samples:
        for v in values:
            assert v not in sent and compact(v) not in compact(sent), v


def test_one_private_request_end_to_end(rig: tuple[Standin, Gateway]) -> None:
    cloud, gw = rig
    text = "Write to bob@example.com and call 13812345678; bob@example.com again."
    for stream in (False, True):
        resp = _post(gw, "chat", _body("chat", [text], stream))
        assert resp.status_code == 200
        assert resp.headers["x-edgecloud-reason"] == "privacy.pseudonymized"
        assert _answer_text(resp, stream) == text
    sent = [r["texts"] for r in cloud.received()]
    assert sent == [["Write to [EMAIL_1] and call [PHONE_1]; [EMAIL_1] again."]] * 2
    log = gw.wait_log('"pseudonymized"')
    lines = [json.loads(x) for x in log.splitlines() if '"pseudonymized"' in x]
    assert lines[0]["pseudonymized"] == ["email", "phone"]
    assert lines[0]["reason"] == "privacy.pseudonymized"
    assert "bob@" not in log and "13812345678" not in log
    metrics = HTTP.get(gw.base + "/metrics").text
    assert 'edgecloud_gateway_pseudonymized_total{kind="email"} 2.0' in metrics
    assert 'edgecloud_gateway_pseudonymized_total{kind="phone"} 2.0' in metrics
    assert "bob@" not in metrics


@pytest.mark.parametrize(("text", "headers", "rule"), [
    ("bob@example.com api_key = abcdefghijklmnop", {}, "privacy.pii.email"),
    ("bob@example.com", {"x-edgecloud-sensitivity": "private"}, "privacy.header"),
])
def test_what_may_not_leave_is_refused_not_sent(
    rig: tuple[Standin, Gateway], text: str, headers: dict[str, str], rule: str
) -> None:
    cloud, gw = rig
    resp = _post(gw, "chat", _body("chat", [text], False), **headers)
    assert resp.status_code == 503
    assert resp.headers["x-edgecloud-reason"] == rule
    assert resp.json()["error"]["code"] == "no_allowed_endpoint"
    assert cloud.received() == []


def test_without_the_list_todays_behaviour(
    start_standin: Callable[..., Standin], start_gateway: Callable[..., Gateway]
) -> None:
    cloud = start_standin("cloud-eu", "cloud-model")
    gw = start_gateway(_config(cloud))
    resp = _post(gw, "chat", _body("chat", ["bob@example.com"], False))
    assert resp.status_code == 503 and resp.headers["x-edgecloud-reason"] == "privacy.pii.email"
    assert cloud.received() == []


def test_an_edge_that_can_take_it_gets_the_original(
    start_standin: Callable[..., Standin], start_gateway: Callable[..., Gateway]
) -> None:
    cloud = start_standin("cloud-eu", "cloud-model")
    edge = start_standin("edge-box", "edge-model")
    gw = start_gateway(_config(cloud, edge.v1, LISTED))
    resp = _post(gw, "chat", _body("chat", ["mail bob@example.com"], True))
    assert resp.status_code == 200
    assert resp.headers["x-edgecloud-reason"] == "privacy.pii.email"
    assert [r["texts"] for r in edge.received()] == [["mail bob@example.com"]]
    assert cloud.received() == []


@pytest.fixture
def dying_edge(start_standin: Callable[..., Standin], start_gateway: Callable[..., Gateway]
               ) -> tuple[Standin, Standin, Gateway]:
    """An edge (a stand-in for an edge node, named so) that is up at the gateway's only probe:
    probes are an hour apart, so whatever happens to it next, the gateway still marks it
    healthy."""
    cloud = start_standin("cloud-eu", "cloud-model")
    cloud.control(echo=True)
    edge = start_standin("edge-box", "edge-model")
    config = _config(cloud, edge.v1, LISTED)
    config["limits"] = {**fast_limits(), "health_interval_s": 3600}
    return cloud, edge, start_gateway(config)


@pytest.mark.parametrize(("fault", "stream"), [
    ("killed", False), ("killed", True),  # connection refused
    ("dropped", False),  # headers, then the connection is dropped mid-answer
    ("503", True),
])
def test_an_edge_that_fails_before_answering_falls_back_to_surrogates(
    dying_edge: tuple[Standin, Standin, Gateway], fault: str, stream: bool
) -> None:
    cloud, edge, gw = dying_edge
    if fault == "killed":
        edge.proc.kill()
        edge.proc.proc.wait(10)  # type: ignore[union-attr]
    else:
        edge.control(**({"fault": "truncate_chunked"} if fault == "dropped" else {"fail": 503}))
    text = "Write to bob@example.com, then bob@example.com again."
    resp = _post(gw, "chat", _body("chat", [text], stream))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-edgecloud-reason"] == "privacy.pseudonymized"
    assert resp.headers["x-edgecloud-placement"] == "cloud"
    assert _answer_text(resp, stream) == text
    received = _received(cloud)
    assert [r["texts"] for r in received] == [["Write to [EMAIL_1], then [EMAIL_1] again."]]
    assert "bob@" not in received[0]["raw"]
    if fault != "killed":
        assert [r["texts"] for r in edge.received()] == [[text]]  # the edge got the original
    line = json.loads([x for x in gw.wait_log('"pseudonymized"').splitlines()
                       if '"pseudonymized"' in x][0])
    assert line["pseudonymized"] == ["email"] and line["fallbacks"] == 1
    assert line["rule"] == "privacy.pii.email" and line["reason"] == "privacy.pseudonymized"


@pytest.mark.parametrize(("text", "headers", "rule"), [
    ("bob@example.com api_key = abcdefghijklmnop", {}, "privacy.pii.email"),
    ("bob@example.com", {"x-edgecloud-sensitivity": "private"}, "privacy.header"),
])
def test_when_the_edge_fails_what_may_not_leave_gets_the_503(
    dying_edge: tuple[Standin, Standin, Gateway], text: str, headers: dict[str, str], rule: str
) -> None:
    cloud, edge, gw = dying_edge
    edge.proc.kill()
    edge.proc.proc.wait(10)  # type: ignore[union-attr]
    resp = _post(gw, "chat", _body("chat", [text], False), **headers)
    assert resp.status_code == 503
    assert resp.headers["x-edgecloud-reason"] == rule
    assert resp.json()["error"]["code"] == "no_allowed_endpoint"
    assert "edge-box" in resp.json()["error"]["message"]
    assert cloud.received() == []


def test_when_the_cloud_fails_too_the_503_names_both(
    dying_edge: tuple[Standin, Standin, Gateway]
) -> None:
    cloud, edge, gw = dying_edge
    edge.control(fail=503)
    cloud.control(echo=False, fail=500)
    resp = _post(gw, "chat", _body("chat", ["mail bob@example.com"], False))
    assert resp.status_code == 503
    assert resp.headers["x-edgecloud-reason"] == "privacy.pseudonymized"
    message = resp.json()["error"]["message"]
    assert "edge-box: HTTP 503" in message and "cloud-eu: HTTP 500" in message
    assert [r["texts"] for r in cloud.received()] == [["mail [EMAIL_1]"]]
