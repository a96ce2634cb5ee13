"""GenAI telemetry across gateway and node: one trace, standard attributes, no prompt text.

A real gateway and a real node both export to a stand-in OTLP/HTTP collector; the client's
`traceparent` joins them into one trace: gateway server span -> upstream attempt -> node server
span -> queue, prefill and decode.
"""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import pytest

from tests.conftest import start_node
from tests.gateway.gwrig import Gateway, endpoint, fast_limits
from tests.gateway.test_gateway_tracing import FAST_EXPORT, Collector, collector

pytestmark = pytest.mark.slow
__all__ = ["collector"]  # the fixture, reused

PROMPT = "a distinctive prompt text 8152"
TRACE = "5bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "10f067aa0ba902b7"


def test_one_trace_from_gateway_to_node_with_genai_attributes(
    collector: Collector, start_gateway: Callable[..., Gateway],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.base}
    proc, node = start_node(tmp_path_factory.mktemp("traced-node"), "--parallel", "1", "--ctx",
                            "1024", name="traced-node", env=env)
    try:
        proc.wait_ready(timeout_s=180)
        edge = endpoint("edge-box", "edge", f"{node}/v1")
        gw = start_gateway({"endpoints": [edge], "limits": fast_limits(),
                            "tracing": {"enabled": True, "endpoint": collector.base}},
                           env=FAST_EXPORT)
        claude = anthropic.Anthropic(base_url=gw.base, api_key="unused", max_retries=0,
                                     default_headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        m = claude.messages.create(model="claude-x", max_tokens=3,
                                   messages=[{"role": "user", "content": PROMPT}])
        spans = collector.wait_spans(6)
    finally:
        proc.stop()
    assert all(s["trace_id"] == TRACE for s in spans), spans
    by_name = {(s["service"], s["name"]): s for s in spans}
    gw_server = by_name[("edgecloud-gateway", "POST /v1/messages")]
    attempt = by_name[("edgecloud-gateway", "POST /v1/chat/completions")]
    node_server = by_name[("edgecloud-node", "POST /v1/chat/completions")]
    assert gw_server["parent_span_id"] == PARENT
    assert attempt["parent_span_id"] == gw_server["span_id"]
    assert node_server["parent_span_id"] == attempt["span_id"]
    for phase in ("queue", "prefill", "decode"):
        assert by_name[("edgecloud-node", phase)]["parent_span_id"] == node_server["span_id"]

    g = gw_server["attributes"]
    assert g["gen_ai.operation.name"] == "chat"
    assert g["gen_ai.provider.name"] == "edgecloud"
    assert g["gen_ai.request.model"] == "claude-x"
    assert g["gen_ai.response.model"] == "gemma-3-270m"
    assert g["gen_ai.usage.output_tokens"] == m.usage.output_tokens
    assert g["edgecloud.placement"] == "edge" and g["edgecloud.reason"]
    n = node_server["attributes"]
    assert n["gen_ai.usage.input_tokens"] == m.usage.input_tokens + (
        m.usage.cache_read_input_tokens or 0)
    assert n["gen_ai.usage.output_tokens"] == m.usage.output_tokens
    assert PROMPT not in repr(spans)  # never prompt text
