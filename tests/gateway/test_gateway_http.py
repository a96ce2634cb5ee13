"""The gateway as a real process in front of recording stand-in providers (edge and cloud).

The stand-ins play a LAN edge box with a vision model and two remote cloud providers; what
each one received is read back from it, so "never sent elsewhere" is observed, not assumed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.supervise import ManagedProcess
from tests.gateway.gwrig import (
    Gateway,
    Standin,
    endpoint,
    fast_limits,
    launch_gateway,
    launch_standin,
    stopped_after,
)

KEY = "ec-test-key-eu"
PRIVATE_KEY = "ec-test-key-private"


class Rig:
    def __init__(self, gw: Gateway, edge: Standin, eu: Standin, us: Standin) -> None:
        self.gw, self.edge, self.eu, self.us = gw, edge, eu, us
        self.client = httpx.Client(base_url=gw.base, timeout=30)

    def clear(self) -> None:
        for s in (self.edge, self.eu, self.us):
            s.clear()
            s.control(fail=None, hang_s=0, cut_after=None, chunks=8, delay_ms=0)

    def chat(self, content: Any, headers: dict[str, str] | None = None, **body: Any
             ) -> httpx.Response:
        payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}],
                   **body}
        return self.client.post("/v1/chat/completions", json=payload, headers=headers or {})


def rig_config(edge: Standin, eu: Standin, us: Standin, **policy: Any) -> dict[str, Any]:
    return {
        "endpoints": [
            endpoint("edge-box", "edge", edge.v1, capabilities=["text", "vision"],
                     max_concurrency=2),
            endpoint("cloud-eu", "cloud", eu.v1, region="eu-central-1",
                     price={"input_per_mtok": 0.5, "output_per_mtok": 1.5}),
            endpoint("cloud-us", "cloud", us.v1, region="us-east-1",
                     price={"input_per_mtok": 0.2, "output_per_mtok": 0.6}),
        ],
        "policy": {"residency": {"eu": ["eu-central-1", "device"],
                                 "us": ["us-east-1", "device"]}, **policy},
        "limits": fast_limits(),
    }


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("gw")
    with stopped_after() as started:
        edge = launch_standin(tmp, started, "edge-box", "edge-vision-model")
        eu = launch_standin(tmp, started, "cloud-eu", "cloud-eu-model")
        us = launch_standin(tmp, started, "cloud-us", "cloud-us-model")
        gw = launch_gateway(tmp, started, rig_config(edge, eu, us))
        r = Rig(gw, edge, eu, us)
        yield r
        r.client.close()


@pytest.fixture
def clean(rig: Rig) -> Rig:
    rig.clear()
    return rig


def _placed(r: httpx.Response) -> tuple[str, str, str]:
    h = r.headers
    return h["x-edgecloud-placement"], h["x-edgecloud-endpoint"], h["x-edgecloud-reason"]


def test_public_request_goes_to_the_cheapest_and_says_why(clean: Rig) -> None:
    r = clean.chat("Write a haiku about rain.")
    assert r.status_code == 200
    assert _placed(r) == ("edge", "edge-box", "cost")
    assert r.json()["choices"][0]["message"]["content"] == "answer from edge-box"


@pytest.mark.parametrize(("text", "rule"), [
    ("我的手机号是13812345678，请帮我订餐", "privacy.pii.phone"),
    ("身份证 11010519491231002X 的主人是谁", "privacy.pii.id_card"),
    ("forward this to jane.doe@example.com", "privacy.pii.email"),
])
def test_personal_data_never_leaves_the_edge(clean: Rig, text: str, rule: str) -> None:
    r = clean.chat(text, headers={"x-edgecloud-placement": "cloud"})
    assert r.status_code == 200 and _placed(r) == ("edge", "edge-box", rule)
    assert clean.eu.received() == [] and clean.us.received() == []


def test_pinned_public_request_goes_to_cloud(clean: Rig) -> None:
    r = clean.chat("hello", headers={"x-edgecloud-placement": "cloud"})
    assert _placed(r)[0] == "cloud" and _placed(r)[2] == "pinned"


def test_residency_header(clean: Rig) -> None:
    r = clean.chat("hello", headers={"x-edgecloud-placement": "cloud", "x-edgecloud-region": "eu"})
    assert _placed(r) == ("cloud", "cloud-eu", "residency.eu")
    assert clean.us.received() == []


def test_model_id_is_rewritten_and_the_rest_passes_unchanged(clean: Rig) -> None:
    body = {"model": "autoglm-phone-9b", "messages": [{"role": "user", "content": "hi"}],
            "top_p": 0.85, "frequency_penalty": 0.2, "extra_field": {"keep": [1, 2]},
            "max_tokens": 64}
    raw = json.dumps(body).encode()
    r = clean.client.post("/v1/chat/completions", content=raw,
                          headers={"content-type": "application/json"})
    assert r.status_code == 200
    (got,) = clean.edge.received()
    assert got["model"] == "edge-vision-model"
    expected = raw.replace(b'"autoglm-phone-9b"', b'"edge-vision-model"')
    assert got["body_sha256"] == hashlib.sha256(expected).hexdigest()
    assert got["extra"] == {"top_p": 0.85, "frequency_penalty": 0.2,
                            "extra_field": {"keep": [1, 2]}}


def test_streaming_passes_through_and_a_cut_stream_ends_with_an_error_event(clean: Rig) -> None:
    with clean.client.stream("POST", "/v1/chat/completions", json={
        "model": "x", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert len(events) == 9 and events[-1] == "data: [DONE]"
    clean.edge.control(cut_after=3)
    with clean.client.stream("POST", "/v1/chat/completions", json={
        "model": "x", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert len(events) == 4 and json.loads(events[-1][6:])["error"]["code"] == "upstream_cut"


def test_cloud_failure_falls_back_then_breaker_opens_and_recovers(clean: Rig) -> None:
    clean.eu.control(fail=503)
    hdr = {"x-edgecloud-placement": "cloud", "x-edgecloud-region": "eu"}
    r = clean.chat("hello", headers=hdr)
    # cloud-eu failed before the first byte: the next allowed endpoint (the edge) answered.
    assert r.status_code == 200 and _placed(r) == ("edge", "edge-box", "fallback")
    clean.chat("hello", headers=hdr)  # second failure opens the breaker (breaker_failures: 2)
    n = len(clean.eu.received())
    for _ in range(3):
        assert _placed(clean.chat("hello", headers=hdr))[1] == "edge-box"
    assert len(clean.eu.received()) == n  # open breaker: cloud-eu is not even tried
    metrics = clean.client.get("/metrics").text
    open_eu = 'edgecloud_gateway_endpoint_breaker_state{endpoint="cloud-eu",tier="cloud"} 2.0'
    assert open_eu in metrics
    assert "edgecloud_gateway_fallbacks_total" in metrics
    clean.eu.control(fail=None)
    _wait_for(lambda: _placed(clean.chat("hello", headers=hdr))[1] == "cloud-eu")


def _wait_for(cond: Any, timeout_s: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_private_request_with_edge_failing_is_refused_and_cloud_sees_nothing(clean: Rig) -> None:
    clean.edge.control(fail=500)
    r = clean.chat("我的手机号是13812345678")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "no_allowed_endpoint" and err["message"].startswith("privacy.pii.phone")
    assert r.headers["x-edgecloud-reason"] == "privacy.pii.phone"
    assert clean.eu.received() == [] and clean.us.received() == []
    clean.edge.control(fail=None)
    _wait_for(lambda: clean.chat("hello").status_code == 200)


BAD_BODIES: list[tuple[str, bytes, dict[str, str]]] = [
    ("malformed json", b'{"model": "x", "messages": [', {}),
    ("not an object", b'[1, 2, 3]', {}),
    ("empty body", b"", {}),
    ("invalid utf-8", b'{"model": "x", "messages": [{"role": "user", "content": "\xff\xfe"}]}', {}),
    ("deep nesting", b'{"a":' * 5000 + b"1" + b"}" * 5000, {}),
    ("messages missing", b'{"model": "x"}', {}),
    ("messages empty", b'{"model": "x", "messages": []}', {}),
    ("messages not a list", b'{"model": "x", "messages": "hi"}', {}),
    ("message not an object", b'{"model": "x", "messages": ["hi"]}', {}),
    ("bad role", b'{"model": "x", "messages": [{"role": "wizard", "content": "hi"}]}', {}),
    ("content a number", b'{"model": "x", "messages": [{"role": "user", "content": 5}]}', {}),
    ("unknown part type",
     b'{"model": "x", "messages": [{"role": "user", "content": [{"type": "video"}]}]}', {}),
    ("text part without text",
     b'{"model": "x", "messages": [{"role": "user", "content": [{"type": "text"}]}]}', {}),
    ("broken data uri", b'{"model": "x", "messages": [{"role": "user", "content": [{"type": '
     b'"image_url", "image_url": {"url": "data:image/png;base64"}}]}]}', {}),
    ("data uri with junk", b'{"model": "x", "messages": [{"role": "user", "content": [{"type": '
     b'"image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]}]}', {}),
    ("model a number", b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', {}),
    ("stream a string",
     b'{"model": "x", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}', {}),
    ("max_tokens negative",
     b'{"model": "x", "max_tokens": -1, "messages": [{"role": "user", "content": "hi"}]}', {}),
    ("temperature a string",
     b'{"model": "x", "temperature": "hot", "messages": [{"role": "user", "content": "hi"}]}', {}),
    ("wrong content type", b"<xml/>", {"content-type": "application/xml"}),
    ("bad sensitivity header", b'{"model": "x", "messages": [{"role": "user", "content": "hi"}]}',
     {"x-edgecloud-sensitivity": "secret"}),
    ("bad deadline header", b'{"model": "x", "messages": [{"role": "user", "content": "hi"}]}',
     {"x-edgecloud-deadline-ms": "soon"}),
]


@pytest.mark.parametrize(("name", "raw", "headers"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_requests_get_a_4xx_openai_error(clean: Rig, name: str, raw: bytes,
                                              headers: dict[str, str]) -> None:
    h = {"content-type": "application/json", **headers}
    r = clean.client.post("/v1/chat/completions", content=raw, headers=h)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:200])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert clean.edge.received() == [] and clean.eu.received() == []


def test_still_serving_after_bad_input_and_other_routes(clean: Rig) -> None:
    assert clean.chat("still here?").status_code == 200
    assert clean.client.get("/v1/chat/completions").status_code == 405
    assert clean.client.get("/nope").status_code == 404
    assert clean.client.get("/healthz").status_code == 200
    assert clean.client.get("/readyz").status_code == 200
    ids = [m["id"] for m in clean.client.get("/v1/models").json()["data"]]
    assert "auto" in ids and "edge-vision-model" in ids


def test_completions_route(clean: Rig) -> None:
    r = clean.client.post("/v1/completions", json={"model": "x", "prompt": "Once upon a time"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "answer from edge-box"
    r = clean.client.post("/v1/completions", json={"model": "x", "prompt": "mail me a@b.io",
                                                   "max_tokens": 8},
                          headers={"x-edgecloud-placement": "cloud"})
    assert _placed(r) == ("edge", "edge-box", "privacy.pii.email")


def test_body_over_the_limit_is_413(clean: Rig) -> None:
    big = {"model": "x", "messages": [{"role": "user", "content": "a" * (17 * 1024 * 1024)}]}
    r = clean.client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_log_has_one_line_per_request_and_no_prompt_text(clean: Rig) -> None:
    marker = "zebra-marker-7f3a 我的手机号是13812345678"
    before = clean.gw.log_path.read_text(encoding="utf-8").count('"reason":"privacy.pii.phone"')
    clean.chat(marker)
    _wait_for(lambda: clean.gw.log_path.read_text(encoding="utf-8").count(
        '"reason":"privacy.pii.phone"') > before)
    text = "\n".join(clean.gw.log_lines())
    assert "zebra-marker" not in text and "13812345678" not in text
    records = [json.loads(line) for line in clean.gw.log_lines() if line.startswith("{")]
    req = [r for r in records if r.get("event") == "request" and r.get("reason") ==
           "privacy.pii.phone"]
    assert req and {"status", "placement", "endpoint", "reason", "added_ms", "total_ms"} <= set(
        req[-1])


def _phone_agent_turns(screenshot: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a phone agent. Answer with one action."},
        {"role": "user", "content": [
            {"type": "text", "text": "Task: open WeChat and send 'on my way' to Zhang San."},
            {"type": "image_url", "image_url": {"url": screenshot}}]},
        {"role": "assistant", "content": "do(action=\"Launch\", app=\"WeChat\")"},
        {"role": "user", "content": [
            {"type": "text", "text": "** Screen Info ** current app: WeChat"},
            {"type": "image_url", "image_url": {"url": screenshot}}]},
    ]


@pytest.mark.parametrize("images_rule", ["edge_only", "allow"])
def test_phone_agent_screenshot_conversation(tmp_path: Path, images_rule: str) -> None:
    from tests.gateway.gwrig import png_data_uri

    started: list[ManagedProcess] = []
    try:
        edge = launch_standin(tmp_path, started, "edge-box", "autoglm-edge")
        cloud = launch_standin(tmp_path, started, "cloud-eu", "cloud-vision")
        cfg = rig_config(edge, cloud, cloud)
        cfg["endpoints"] = cfg["endpoints"][:2]
        cfg["endpoints"][0]["capabilities"] = ["text"] if images_rule == "allow" else [
            "text", "vision"]
        cfg["policy"]["privacy"] = {"images": images_rule}
        gw = launch_gateway(tmp_path, started, cfg)
        shot = png_data_uri(2_000_000)
        body = {"model": "autoglm-phone-9b", "messages": _phone_agent_turns(shot), "stream": True,
                "top_p": 0.85, "frequency_penalty": 0.2, "max_tokens": 3000}
        with httpx.Client(base_url=gw.base, timeout=60) as c:
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                chunks = [line for line in r.iter_lines() if line.startswith("data: ")]
            assert r.status_code == 200 and chunks[-1] == "data: [DONE]"
            where = r.headers["x-edgecloud-placement"]
        want = hashlib.sha256(shot.encode()).hexdigest()
        if images_rule == "edge_only":
            assert where == "edge" and r.headers["x-edgecloud-reason"] == "privacy.image"
            (got,) = edge.received()
            assert cloud.received() == []
        else:
            assert where == "cloud" and r.headers["x-edgecloud-reason"] == "capability.vision"
            (got,) = cloud.received()
            assert edge.received() == []
        assert got["images"] == [want, want] and got["messages"] == 4
        assert got["extra"] == {"top_p": 0.85, "frequency_penalty": 0.2}
    finally:
        for p in reversed(started):
            p.stop()


def test_client_leaving_mid_stream_stops_the_upstream(clean: Rig) -> None:
    clean.edge.control(chunks=200, delay_ms=20)  # a 4-second answer
    with clean.client.stream("POST", "/v1/chat/completions", json={
            "model": "x", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        for _ in r.iter_lines():
            break  # the client reads one line and hangs up
    clean.gw.wait_log('"error":"client_gone"')
    assert '"error":"client_gone"' in clean.gw.log_path.read_text(encoding="utf-8")
    assert clean.chat("still serving?").status_code == 200
