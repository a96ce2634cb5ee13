"""The gateway's request counter and added-latency histogram, kept as plain numbers, render as
the Prometheus counter and histogram they were (parsed back with prometheus_client's parser);
the workers of one gateway answer one merged /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecloud.gateway.metrics import GatewayMetrics
from edgecloud.gateway.metrics_share import WorkerShare


def _families(m: GatewayMetrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        out.setdefault(fam.name, []).extend((s.name, s.labels, s.value) for s in fam.samples)
    return out


def test_requests_counter_by_labels() -> None:
    m = GatewayMetrics([])
    for _ in range(3):
        m.request("edge", "edge-box", "cost", 200)
    m.request("none", "none", "request.invalid_request_error", 400)
    got = {(s[1]["placement"], s[1]["status"]): s[2]
           for s in _families(m)["edgecloud_gateway_requests"]
           if s[0] == "edgecloud_gateway_requests_total"}
    assert got == {("edge", "200"): 3.0, ("none", "400"): 1.0}


def test_added_latency_histogram_is_cumulative_with_le_bounds() -> None:
    m = GatewayMetrics([])
    for v in (0.00005, 0.0001, 0.0003, 0.002, 0.5):
        m.added_latency(v)
    samples = _families(m)["edgecloud_gateway_added_latency_seconds"]
    buckets = {s[1]["le"]: s[2] for s in samples if s[0].endswith("_bucket")}
    assert buckets["0.0001"] == 2  # a value on a bound counts in its bucket
    assert buckets["0.0005"] == 3
    assert buckets["0.0025"] == 4
    assert buckets["0.1"] == 4
    assert buckets["+Inf"] == 5
    count = next(s[2] for s in samples if s[0].endswith("_count"))
    total = next(s[2] for s in samples if s[0].endswith("_sum"))
    assert count == 5
    assert total == pytest.approx(0.50245)


def test_workers_merge_counters_summed_and_gauges_per_worker(tmp_path: Path) -> None:
    workers = []
    for i, n in enumerate((3, 4)):
        m = GatewayMetrics([])
        for _ in range(n):
            m.request("edge", "edge-box", "cost", 200)
            m.added_latency(0.0003)
        m.state_up(i == 0)
        workers.append(WorkerShare(tmp_path, i, m.registry))
    workers[1].write(workers[1].encode())
    (tmp_path / "worker-7.json").write_bytes(b"{half a fi")  # being written: left out
    fams = {f.name: f for f in text_string_to_metric_families(
        workers[0].render(workers[0].others()).decode())}
    total = [s for s in fams["edgecloud_gateway_requests"].samples
             if s.name.endswith("_total")]
    assert [(s.labels["status"], s.value) for s in total] == [("200", 7.0)]
    count = [s.value for s in fams["edgecloud_gateway_added_latency_seconds"].samples
             if s.name.endswith("_count")]
    assert count == [7.0]
    up = {s.labels["worker"]: s.value for s in fams["edgecloud_gateway_state_up"].samples}
    assert up == {"0": 1.0, "1": 0.0}
