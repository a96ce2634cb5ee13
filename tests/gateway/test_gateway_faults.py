"""The gateway under upstream faults, with a real gateway process and stand-in providers.

The stand-ins play misbehaving remote parties: one that hangs after its headers, truncates its
body, sends invalid JSON, or holds a request; one whose client (the gateway) must hang up on it
when our own client leaves. Privacy is asserted on every path: a private request never reaches a
cloud stand-in, whatever fails.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.gwrig import (
    Gateway,
    Standin,
    endpoint,
    launch_gateway,
    launch_standin,
    stopped_after,
)

PRIVATE = {"x-edgecloud-sensitivity": "private"}
CLOUD = {"x-edgecloud-placement": "cloud"}


class Rig:
    def __init__(self, gw: Gateway, slow_gw: Gateway, edge: Standin, a: Standin,
                 b: Standin) -> None:
        self.gw, self.slow_gw, self.edge, self.a, self.b = gw, slow_gw, edge, a, b

    def reset(self) -> None:
        for s in (self.edge, self.a, self.b):
            s.control(fail=None, hang_s=0, cut_after=None, chunks=8, delay_ms=0, fault=None)
            s.clear()
        _wait_for(lambda: "2.0" not in _breakers(self.gw).values(), what="breakers close")

    def clouds_saw_nothing(self) -> bool:
        return self.a.received() == [] and self.b.received() == []


def _config(edge: Standin, a: Standin, b: Standin, **limits: Any) -> dict[str, Any]:
    return {
        "endpoints": [
            # The edge holds requests for as long as its stand-in likes: a client that leaves is
            # the only thing that ends the wait early.
            endpoint("edge-box", "edge", edge.v1, timeout_s=60),
            endpoint("cloud-a", "cloud", a.v1, timeout_s=1.0,
                     price={"input_per_mtok": 0.1, "output_per_mtok": 0.2}),
            endpoint("cloud-b", "cloud", b.v1,
                     price={"input_per_mtok": 1.0, "output_per_mtok": 2.0}),
        ],
        "limits": {"health_interval_s": 0.2, "breaker_failures": 3, "breaker_open_s": 0.5,
                   **limits},
    }


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("gwfaults")
    with stopped_after() as started:
        edge, a, b = (launch_standin(tmp, started, name, f"{name}-model")
                      for name in ("edge-box", "cloud-a", "cloud-b"))
        gw = launch_gateway(tmp, started, _config(edge, a, b))
        # Probed once at start only: breaker trials are decided by requests alone.
        slow = launch_gateway(tmp, started, _config(edge, a, b, health_interval_s=3600,
                                                    breaker_failures=1))
        yield Rig(gw, slow, edge, a, b)


@pytest.fixture
def clean(rig: Rig) -> Rig:
    rig.reset()
    return rig


def _chat(gw: Gateway, headers: dict[str, str] | None = None, content: Any = "hello",
          **body: Any) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}],
               **body}
    return httpx.post(gw.v1 + "/chat/completions", json=payload, headers=headers or {},
                      timeout=30)


def _wait_for(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.02)


def _metrics(gw: Gateway) -> str:
    return httpx.get(gw.base + "/metrics", timeout=5).text


def _breakers(gw: Gateway) -> dict[str, str]:
    out = {}
    for line in _metrics(gw).splitlines():
        if line.startswith("edgecloud_gateway_endpoint_breaker_state{"):
            name = line.split('endpoint="')[1].split('"')[0]
            out[name] = line.rsplit(" ", 1)[1]
    return out


def _stats(s: Standin) -> dict[str, int]:
    return httpx.get(s.base + "/_stats", timeout=5).json()


def _records(gw: Gateway) -> list[dict[str, Any]]:
    out = []
    for line in gw.log_lines():
        if line.startswith("{") and '"event":"request"' in line:
            out.append(json.loads(line))
    return out


def _open_socket(gw: Gateway, body: dict[str, Any], headers: dict[str, str]) -> socket.socket:
    """Send a request on a raw connection (to hang up on it at will)."""
    raw = json.dumps(body).encode()
    host, port = gw.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
                 f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n{head}\r\n"
                 .encode() + raw)
    return sock


# -- item 2: failures after the headers of a non-streamed answer fall back ---------------------

@pytest.mark.parametrize("fault", ["hang_after_headers", "truncate_chunked", "short_length"])
def test_non_streamed_answer_broken_after_its_headers_falls_back(clean: Rig, fault: str) -> None:
    clean.a.control(fault=fault)
    r = _chat(clean.gw, CLOUD)
    assert r.status_code == 200, r.text
    assert r.headers["x-edgecloud-endpoint"] == "cloud-b"
    assert r.headers["x-edgecloud-reason"] == "fallback"
    assert r.json()["choices"][0]["message"]["content"] == "answer from cloud-b"
    assert len(clean.a.received()) == 1  # it was tried first
    assert 'edgecloud_gateway_fallbacks_total{cause="read",endpoint="cloud-a"}' in _metrics(
        clean.gw)


@pytest.mark.parametrize("fault", ["truncate_chunked", "short_length"])
def test_private_request_on_a_broken_edge_fails_closed(clean: Rig, fault: str) -> None:
    clean.edge.control(fault=fault)
    r = _chat(clean.gw, PRIVATE)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_allowed_endpoint"
    assert r.headers["x-edgecloud-reason"] == "privacy.header"
    assert "while reading the answer" in r.json()["error"]["message"]
    assert clean.clouds_saw_nothing()


def test_invalid_json_answer_falls_back_and_counts_as_an_upstream_failure(clean: Rig) -> None:
    clean.a.control(fault="invalid_json")
    for _ in range(3):  # breaker_failures: 3 in a row open the breaker
        r = _chat(clean.gw, CLOUD)
        # Nothing had reached the client: the next endpoint answers instead.
        assert r.status_code == 200 and r.headers["x-edgecloud-endpoint"] == "cloud-b"
        assert r.headers["x-edgecloud-reason"] == "fallback"
        assert r.json()["choices"][0]["message"]["content"] == "answer from cloud-b"
    metrics = _metrics(clean.gw)
    assert 'edgecloud_gateway_upstream_failures_total{cause="invalid_json",endpoint="cloud-a"} ' \
        '3.0' in metrics
    assert 'edgecloud_gateway_fallbacks_total{cause="invalid_json",endpoint="cloud-a"} 3.0' \
        in metrics
    assert len(clean.a.received()) == 3


def test_invalid_json_from_the_last_allowed_endpoint_is_relayed_and_counted(clean: Rig) -> None:
    """A private request's only endpoint answers 200 with a body that is not JSON: nowhere else
    may take it, so the client gets what the edge sent, and the edge is counted against."""
    clean.edge.control(fault="invalid_json")
    r = _chat(clean.gw, PRIVATE)
    assert r.status_code == 200 and r.headers["x-edgecloud-endpoint"] == "edge-box"
    with pytest.raises(ValueError):
        r.json()
    assert 'edgecloud_gateway_upstream_failures_total{cause="invalid_json",endpoint="edge-box"} ' \
        '1.0' in _metrics(clean.gw)
    assert clean.clouds_saw_nothing()


# -- item 3: a client that leaves while the upstream is silent ---------------------------------

@pytest.mark.parametrize("phase", ["before_headers", "during_body", "during_stream"])
def test_client_that_leaves_closes_the_upstream_connection(clean: Rig, phase: str) -> None:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if phase == "before_headers":
        clean.edge.control(hang_s=30)
    elif phase == "during_body":
        clean.edge.control(fault="hang_after_headers")
    else:
        clean.edge.control(delay_ms=30_000, chunks=3)
        body["stream"] = True
    sock = _open_socket(clean.gw, body, PRIVATE)
    _wait_for(lambda: _stats(clean.edge)["held"] == 1, what="edge holds the request")
    if phase == "during_stream":
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the stream has begun
    sock.close()
    # The edge's deadline is 60 s and it holds for 30: only the gateway hanging up ends it now.
    _wait_for(lambda: _stats(clean.edge) == {"held": 0, "disconnects": 1}, timeout_s=10,
              what="the gateway hangs up on the edge")
    text = clean.gw.wait_log('"error":"client_gone"')
    assert '"error":"client_gone"' in text
    if phase != "during_stream":
        assert '"status":499' in text
    assert _breakers(clean.gw)["edge-box"] == "0.0"  # a client leaving is not the edge's fault
    assert 'edgecloud_gateway_endpoint_in_flight{endpoint="edge-box",tier="edge"} 0.0' in \
        _metrics(clean.gw)
    clean.edge.control(hang_s=0, fault=None, delay_ms=0, chunks=8)
    r = _chat(clean.gw, PRIVATE)
    assert r.status_code == 200 and r.headers["x-edgecloud-endpoint"] == "edge-box"
    assert clean.clouds_saw_nothing()


# -- item 1: the breaker's trial is released on every path; bodies never make a 500 ------------

def test_breaker_trial_is_released_when_its_client_leaves(clean: Rig) -> None:
    gw = clean.slow_gw  # probes never run: only requests decide the breaker
    clean.edge.control(fail=503)
    r = _chat(gw, PRIVATE)
    assert r.status_code == 503 and r.headers["x-edgecloud-reason"] == "privacy.header"
    assert _breakers(gw)["edge-box"] == "2.0"
    clean.edge.control(fail=None, hang_s=30)
    _wait_for(lambda: "edge-box" in httpx.get(gw.base + "/readyz", timeout=5).json()["available"],
              what="breaker wait over")
    sock = _open_socket(gw, {"model": "m", "messages": [{"role": "user", "content": "x"}]},
                        PRIVATE)  # takes the half-open trial
    _wait_for(lambda: _stats(clean.edge)["held"] == 1, what="edge holds the trial")
    assert _breakers(gw)["edge-box"] == "1.0"
    sock.close()
    _wait_for(lambda: _stats(clean.edge)["held"] == 0, what="the gateway hangs up")
    clean.edge.control(hang_s=0)
    r = _chat(gw, PRIVATE)  # the trial slot is free again: this one is the trial
    assert r.status_code == 200 and r.headers["x-edgecloud-endpoint"] == "edge-box"
    assert _breakers(gw)["edge-box"] == "0.0"
    assert clean.clouds_saw_nothing()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


_HI = '"messages":[{"role":"user","content":"hi"}]'


@pytest.mark.parametrize("raw", [
    # orjson reads 1024 levels and writes 254; the model cannot be spliced in place.
    '{"model":"gpt-4o-mini",' + _HI + ',"x":' + _nested(600) + ',"model":"gpt-4o-mini"}',
    '{"mo\\u0064el":"gpt-4o-mini",' + _HI + ',"x":' + _nested(300) + "}",
    '{"model":"gpt-4o-mini",' + _HI + ',"x":' + _nested(1100) + "}",
    '{"model":"gpt-4o-mini",' + _HI + ',"n":1e400}',
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}],"model":"a"}',
    '{"model":"gpt-4o-mini",' + _HI + ',"n":' + "9" * 40 + "}",
], ids=["repeated-model-600-deep", "escaped-model-300-deep", "1100-deep", "huge-float",
        "lone-surrogate", "huge-int"])
def test_no_request_body_gets_a_500(clean: Rig, raw: str) -> None:
    r = httpx.post(clean.gw.v1 + "/chat/completions", content=raw.encode(), timeout=30,
                   headers={"content-type": "application/json", **CLOUD})
    assert r.status_code < 500 or r.status_code in (502, 503), r.text
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["type"] and err["message"]
    # The endpoints still take requests (no stuck trial, no leaked count).
    assert _chat(clean.gw, CLOUD).status_code == 200
    assert 'edgecloud_gateway_endpoint_in_flight{endpoint="cloud-a",tier="cloud"} 0.0' in \
        _metrics(clean.gw)


def test_deep_body_that_needs_a_new_model_id_is_a_400(clean: Rig) -> None:
    raw = '{"model":"gpt-4o-mini",' + _HI + ',"x":' + _nested(400) + ',"model":"gpt-4o-mini"}'
    r = httpx.post(clean.gw.v1 + "/chat/completions", content=raw.encode(), timeout=30,
                   headers={"content-type": "application/json", **CLOUD})
    assert r.status_code == 400 and r.json()["error"]["code"] == "body_too_deep"
    assert clean.clouds_saw_nothing()
