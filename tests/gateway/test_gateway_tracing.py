"""OpenTelemetry tracing: a real gateway exporting to a stand-in OTLP/HTTP collector.

The collector decodes the protobuf ExportTraceServiceRequest the gateway POSTs; the stand-in
providers record the `traceparent` they receive, so trace continuity is observed end to end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.gateway.config import TracingConfig
from edgecloud.gateway.errors import ConfigError
from edgecloud.gateway.tracing import resolve_tracing
from edgecloud.supervise import ManagedProcess, free_port
from tests.gateway.gwrig import Gateway, Standin, endpoint, fast_limits

COLLECTOR = Path(__file__).with_name("standin_otlp_collector.py")
PROMPT = "a distinctive prompt text 4711"
KEY = "ec-tracing-test-key"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # ms; the SDK default is 5 s


# -- the pure resolution of config + standard env ------------------------------------------------
def test_off_by_default_and_with_the_deploy_off_env() -> None:
    assert resolve_tracing(TracingConfig(), {}) is None
    deploy_off = {
        "OTEL_SDK_DISABLED": "true",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
    }
    assert resolve_tracing(TracingConfig(), deploy_off) is None
    assert resolve_tracing(TracingConfig(enabled=True), {"OTEL_SDK_DISABLED": "true"}) is None
    assert (
        resolve_tracing(
            TracingConfig(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
        )
        is None
    )
    assert (
        resolve_tracing(
            TracingConfig(),
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
        )
        is None
    )


def test_the_standard_env_turns_it_on() -> None:
    s = resolve_tracing(TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert s is not None and s.endpoint == "http://c:4318/v1/traces"
    assert s.service_name == "edgecloud-gateway" and s.sample_ratio is None and not s.warnings
    s = resolve_tracing(
        TracingConfig(), {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "gw-eu"}
    )
    assert s is not None and s.endpoint == "http://localhost:4318/v1/traces"
    assert s.service_name == "gw-eu"
    s = resolve_tracing(TracingConfig(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/t"})
    assert s is not None and s.endpoint == "http://c/t"  # the signal URL is taken as is


def test_config_wins_over_env_and_grpc_is_flagged() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "from-env",
    }
    s = resolve_tracing(TracingConfig(service_name="gw", sample_ratio=0.25), env)
    assert s is not None and s.service_name == "gw" and s.sample_ratio == 0.25
    assert s.warnings and "4318" in s.warnings[0]
    s = resolve_tracing(TracingConfig(endpoint="http://mine:4318"), env)
    assert s is not None and s.endpoint == "http://mine:4318/v1/traces" and not s.warnings


def test_an_exporter_the_gateway_lacks_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER=zipkin"):
        resolve_tracing(TracingConfig(), {"OTEL_TRACES_EXPORTER": "zipkin"})


# -- real processes ---------------------------------------------------------------------------
class Collector:
    def __init__(self, proc: ManagedProcess, base: str) -> None:
        self.proc, self.base = proc, base

    def spans(self) -> list[dict[str, Any]]:
        return httpx.get(self.base + "/_spans", timeout=5).json()

    def posts(self) -> int:
        return int(httpx.get(self.base + "/_posts", timeout=5).json())

    def wait_spans(self, count: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """The spans, once at least `count` arrived (polled with a deadline)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(
        [sys.executable, str(COLLECTOR), "--port", str(port)],
        f"{base}/healthz",
        log_path=str(tmp_path / "collector.log"),
        name="otlp-collector",
    )
    proc.start()
    try:
        proc.wait_ready(timeout_s=30)
        yield Collector(proc, base)
    finally:
        proc.stop()


def _by_kind(spans: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return sorted(
        (s for s in spans if s["kind"] == kind),
        key=lambda s: s["attributes"].get("edgecloud.attempt", 0),
    )


@pytest.fixture
def cloud(start_standin: Callable[..., Standin]) -> Standin:
    """A stand-in cloud provider that records the `traceparent` it receives."""
    return start_standin("cloud-eu")


def _cloud_cfg(cloud: Standin, **more: Any) -> dict[str, Any]:
    """A gateway config with `cloud` as its one endpoint, and `more` top-level sections."""
    return {"endpoints": [endpoint("cloud-eu", "cloud", cloud.v1)], **more}


def _chat(gw: Gateway, headers: dict[str, str], **body: Any) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], **body}
    return httpx.post(gw.v1 + "/chat/completions", json=payload, headers=headers, timeout=30)


def test_a_request_continues_the_client_trace_to_the_endpoint(
    collector: Collector, cloud: Standin, start_gateway: Callable[..., Gateway]
) -> None:
    import hashlib

    cfg = _cloud_cfg(
        cloud,
        auth={"keys": [{"name": "tester", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
        tracing={
            "enabled": True,
            "service_name": "gw-test",
            "sample_ratio": 1.0,
            "endpoint": collector.base,
        },
    )
    gw = start_gateway(cfg, env=FAST_EXPORT)
    r = _chat(
        gw, {"authorization": f"Bearer {KEY}", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    )
    assert r.status_code == 200, r.text

    spans = collector.wait_spans(2)
    [server] = _by_kind(spans, "SPAN_KIND_SERVER")
    [client] = _by_kind(spans, "SPAN_KIND_CLIENT")
    # The gateway joined the client's trace, and the endpoint was told to join it too.
    assert server["trace_id"] == client["trace_id"] == CLIENT_TRACE
    assert server["parent_span_id"] == CLIENT_SPAN
    assert client["parent_span_id"] == server["span_id"]
    [got] = cloud.received()
    assert got["traceparent"] == f"00-{CLIENT_TRACE}-{client['span_id']}-01"

    a = server["attributes"]
    assert server["service"] == "gw-test" and server["name"] == "POST /v1/chat/completions"
    assert a["http.response.status_code"] == 200
    assert (a["edgecloud.placement"], a["edgecloud.endpoint"]) == ("cloud", "cloud-eu")
    assert a["edgecloud.reason"] == r.headers["x-edgecloud-reason"] == "only"
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["edgecloud.stream"] is False
    assert a["http.request.body.size"] > 0
    assert a["http.response.body.size"] == len(r.content)
    assert a["edgecloud.key_name"] == "tester"
    assert client["attributes"]["edgecloud.attempt"] == 1
    assert client["attributes"]["http.response.status_code"] == 200
    assert client["attributes"]["url.path"] == "/v1/chat/completions"
    # Never prompt text or keys.
    dump = repr(spans)
    assert PROMPT not in dump and KEY not in dump


def test_a_fallback_shows_two_attempts_and_env_alone_turns_tracing_on(
    collector: Collector,
    start_standin: Callable[..., Standin],
    start_gateway: Callable[..., Gateway],
) -> None:
    cheap, dear = start_standin("cloud-cheap"), start_standin("cloud-dear")
    cheap.control(fail=503)
    cfg = {
        "endpoints": [
            endpoint("cloud-cheap", "cloud", cheap.v1, price={"input_per_mtok": 0.1}),
            endpoint("cloud-dear", "cloud", dear.v1, price={"input_per_mtok": 0.9}),
        ],
        "limits": fast_limits(),
    }
    env = {
        **FAST_EXPORT,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.base,
        "OTEL_SERVICE_NAME": "gw-env",
    }
    gw = start_gateway(cfg, env=env)
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        timeout=30,
        json={
            "model": "auto",
            "stream": True,
            "messages": [{"role": "user", "content": PROMPT}],
        },
    ) as r:
        body = r.read()
    assert r.status_code == 200 and r.headers["x-edgecloud-reason"] == "fallback"

    spans = collector.wait_spans(3)
    [server] = _by_kind(spans, "SPAN_KIND_SERVER")
    first, second = _by_kind(spans, "SPAN_KIND_CLIENT")
    assert server["service"] == "gw-env" and server["parent_span_id"] == ""  # a new trace
    assert {first["trace_id"], second["trace_id"]} == {server["trace_id"]}
    assert first["parent_span_id"] == second["parent_span_id"] == server["span_id"]
    assert first["attributes"]["edgecloud.endpoint"] == "cloud-cheap"
    assert first["attributes"]["http.response.status_code"] == 503
    assert first["status"] == 2  # STATUS_CODE_ERROR
    assert second["attributes"]["edgecloud.endpoint"] == "cloud-dear"
    assert second["attributes"]["edgecloud.attempt"] == 2
    a = server["attributes"]
    assert a["edgecloud.reason"] == "fallback" and a["edgecloud.fallbacks"] == 1
    assert a["edgecloud.stream"] is True and a["http.response.body.size"] == len(body)
    # Each endpoint saw its own attempt's span as parent.
    assert cheap.received()[0]["traceparent"].split("-")[2] == first["span_id"]
    assert dear.received()[0]["traceparent"].split("-")[2] == second["span_id"]


@pytest.mark.parametrize("how", ["config_off", "deploy_env_off"])
def test_tracing_off_sends_nothing_and_adds_no_header(
    how: str, collector: Collector, cloud: Standin, start_gateway: Callable[..., Gateway]
) -> None:
    cfg = _cloud_cfg(cloud)
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.base}
    if how == "config_off":
        cfg["tracing"] = {"enabled": False, "endpoint": collector.base}
    else:  # what the Kubernetes manifests set when tracing is off
        env.update(OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="none")
    gw = start_gateway(cfg, env=env)
    for stream in (False, True):
        r = _chat(gw, {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}, stream=stream)
        assert r.status_code == 200
    assert [g["traceparent"] for g in cloud.received()] == [None, None]
    assert gw.proc.stop() == 0  # a gateway with tracing on would flush its spans here
    assert collector.posts() == 0 and collector.spans() == []
    assert '"tracing":null' in gw.log_path.read_text(encoding="utf-8")


def test_sampled_out_requests_export_nothing_but_pass_the_trace_on(
    collector: Collector, cloud: Standin, start_gateway: Callable[..., Gateway]
) -> None:
    tracing = {"enabled": True, "sample_ratio": 0.0, "endpoint": collector.base}
    cfg = _cloud_cfg(cloud, tracing=tracing)
    gw = start_gateway(cfg, env=FAST_EXPORT)
    assert _chat(gw, {}).status_code == 200  # a new trace, sampled out by the ratio
    # A client's unsampled trace stays unsampled (parent-based).
    assert _chat(gw, {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"}).status_code == 200
    own, theirs = (g["traceparent"] for g in cloud.received())
    sampled = [int(tp.rsplit("-", 1)[1], 16) & 1 for tp in (own, theirs)]
    assert sampled == [0, 0]  # the W3C "sampled" flag is off, so the endpoint does not record
    assert theirs.startswith(f"00-{CLIENT_TRACE}-") and CLIENT_SPAN not in theirs
    assert gw.proc.stop() == 0
    assert collector.posts() == 0


def test_with_tracing_off_the_sdk_is_not_even_imported() -> None:
    import subprocess

    code = (
        "import sys, asyncio\n"
        "from edgecloud.gateway.app import GatewayApp\n"
        "from edgecloud.gateway.config import parse_config\n"
        "app = GatewayApp(parse_config('endpoints: [{name: e, tier: edge, url: http://h/v1}]'))\n"
        "assert app.tracer is None and app.tracing is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_a_collector_that_is_down_costs_no_answers_and_does_not_hold_up_the_exit(
    cloud: Standin, start_gateway: Callable[..., Gateway]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = _cloud_cfg(cloud, tracing={"enabled": True, "endpoint": dead})
    gw = start_gateway(cfg, env=FAST_EXPORT)
    for stream in (False, True, False):
        assert _chat(gw, {}, stream=stream).status_code == 200
    assert all(g["traceparent"] for g in cloud.received())
    # The exporter would retry for 10 s; the gateway gives queued spans a bounded try and
    # exits 0 (a stop that had to SIGKILL it would return -9).
    assert gw.proc.stop() == 0
