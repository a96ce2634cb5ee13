"""Pure parts of the bench, against hand-checked values: percentiles, knee, goodput, energy,
schedules, the SSE scanner and the workloads."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from edgecloud.bench.results import LevelSummary, Percentiles, RequestRecord
from edgecloud.bench.schedule import poisson_schedule
from edgecloud.bench.sse import StreamScanner, has_text
from edgecloud.bench.stats import (
    counter_delta,
    energy_ratios,
    estimate_joules,
    find_knee,
    meets_slo,
    percentile,
    summarize,
    summarize_level,
    tpot_ms,
)
from edgecloud.bench.workloads import WorkloadError, encode_bodies, load_workload, png_bytes


def test_percentile_hand_checked() -> None:
    data = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(data, 0) == 10.0
    assert percentile(data, 50) == 30.0
    assert percentile(data, 100) == 50.0
    assert percentile(data, 90) == pytest.approx(46.0)  # rank 3.6: 40 + 0.6 * 10
    assert percentile(data, 95) == pytest.approx(48.0)
    assert percentile([7.0], 99) == 7.0
    # 1..100: rank 0.99 * 99 = 98.01 -> 99 + 0.01
    assert percentile([float(i) for i in range(1, 101)], 99) == pytest.approx(99.01)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.mean, s.p50, s.min, s.max, s.count) == (2.5, 2.5, 1.0, 4.0, 4)
    assert summarize([]).count == 0 and summarize([]).p50 is None


def _rec(
    ttft: float | None,
    e2e: float | None,
    tokens: int = 5,
    ok: bool = True,
    error: str | None = None,
) -> RequestRecord:
    return RequestRecord(
        level=1,
        start_s=0,
        ttft_ms=ttft,
        e2e_ms=e2e,
        output_tokens=tokens,
        ok=ok,
        error=error,
        itl_ms=[10.0] * max(tokens - 1, 0),
    )


def test_tpot_goodput_and_level_summary() -> None:
    assert tpot_ms(_rec(100, 500, tokens=5)) == 100.0  # (500-100)/4
    assert tpot_ms(_rec(100, 100, tokens=1)) is None
    slo = {"ttft_ms": 200.0, "e2e_ms": 1000.0}
    assert meets_slo(_rec(150, 900), slo)
    assert not meets_slo(_rec(250, 900), slo)
    assert not meets_slo(_rec(150, 1100), slo)
    assert not meets_slo(_rec(None, None, ok=False, error="timeout"), slo)
    records = [
        _rec(150, 900),
        _rec(250, 900),
        _rec(150, 800),
        _rec(None, None, ok=False, error="http_429"),
    ]
    s = summarize_level(4, records, duration_s=2.0, slo=slo)
    assert (s.requests, s.ok, s.errors) == (4, 3, {"http_429": 1})
    assert s.requests_per_s == 1.5 and s.output_tokens_per_s == 7.5
    assert s.goodput_share == 0.5 and s.goodput_per_s == 1.0
    assert s.ttft_ms.p50 == 150.0 and s.itl_ms.count == 12
    assert s.tpot_ms.p50 == 162.5  # of 187.5, 162.5, 162.5


def _level(level: float, tok_s: float, p95: float) -> LevelSummary:
    p = Percentiles(p95=p95, count=10)
    return LevelSummary(
        level=level,
        requests=10,
        ok=10,
        duration_s=1,
        requests_per_s=tok_s / 10,
        output_tokens_per_s=tok_s,
        e2e_ms=p,
        ttft_ms=p,
        tpot_ms=p,
        itl_ms=p,
    )


def test_knee_throughput_plateau() -> None:
    levels = [
        _level(1, 60, 1000),
        _level(2, 110, 1100),
        _level(4, 160, 1500),
        _level(8, 165, 2900),
        _level(16, 166, 6000),
    ]
    knee = find_knee(levels)
    assert knee is not None and knee.level == 4 and knee.reason == "throughput_plateau"


def test_knee_latency_departure_and_none() -> None:
    levels = [_level(1, 60, 1000), _level(2, 118, 1500), _level(4, 230, 2600)]
    knee = find_knee(levels)
    assert knee is not None and knee.level == 2 and knee.reason == "latency_departure"
    growing = [_level(1, 60, 1000), _level(2, 118, 1100), _level(4, 230, 1300)]
    knee = find_knee(growing)
    assert knee is not None and knee.level == 4 and knee.reason == "none"
    assert find_knee([]) is None


def test_energy_math() -> None:
    assert estimate_joules(12.0, 10.0) == 120.0
    assert energy_ratios(120.0, 60, 2400) == (2.0, 20.0)
    assert energy_ratios(None, 10, 10) == (None, None)
    assert counter_delta(100, 250, 1000) == 150
    assert counter_delta(900, 50, 1000) == 150  # wrapped


def test_poisson_schedule_is_seeded_and_has_the_rate() -> None:
    a = poisson_schedule(100.0, count=5000, seed=3)
    assert a == poisson_schedule(100.0, count=5000, seed=3)
    assert a != poisson_schedule(100.0, count=5000, seed=4)
    assert all(x < y for x, y in zip(a, a[1:], strict=False))
    assert 5000 / a[-1] == pytest.approx(100.0, rel=0.05)
    b = poisson_schedule(10.0, duration_s=3.0, seed=1)
    assert b and b[-1] <= 3.0


def test_sse_scanner_split_events_usage_and_done() -> None:
    s = StreamScanner()
    s.feed(
        b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\r\n\r\n'
        b'data: {"choices":[{"delta":{"content":"Hi"}}]}\r\n\r\nda',
        1.0,
    )
    s.feed(b'ta: {"choices":[{"delta":{"content": "x"}}],"usage":null}\r\n\r\n', 2.0)
    s.feed(
        b': ping\r\n\r\ndata: {"choices":[],"usage":{"prompt_tokens":3,'
        b'"completion_tokens":2}}\r\n\r\ndata: [DONE]\r\n\r\n',
        3.0,
    )
    assert s.token_times == [1.0, 2.0]
    assert s.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert s.done and not s.bad and s.error is None
    assert has_text(b'{"choices":[{"text":"a"}]}') and not has_text(b'{"text":""}')


def test_sse_scanner_flags_errors_and_non_sse() -> None:
    s = StreamScanner()
    s.feed(b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n', 1.0)
    assert s.error == "overloaded"
    html = StreamScanner()
    html.feed(b"<html><body>hello</body></html>\n\n", 1.0)
    assert html.bad


def test_png_screenshot_is_real_and_deterministic() -> None:
    png = png_bytes(7)
    assert png == png_bytes(7) and png != png_bytes(8)
    assert 1_000_000 <= len(png) <= 3_100_000
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1080, 2400)
    # Every chunk's CRC is right.
    pos = 8
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", png[pos + 8 + n : pos + 12 + n])
        assert zlib.crc32(kind + data) & 0xFFFFFFFF == crc
        pos += 12 + n


def test_builtin_workloads_and_bodies() -> None:
    chat = load_workload("short-chat", seed=1)
    assert chat.items == load_workload("short-chat", seed=1).items
    bodies = encode_bodies(chat, model="m", max_tokens=32, stream=True)
    assert b'"include_usage":true' in bodies[0] and b'"max_tokens":32' in bodies[0]
    agent = load_workload("phone-agent", seed=0, size=4)
    url = agent.items[0]["messages"][1]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and len(url) > 1_300_000
    assert len(load_workload("long-context").items[0]["messages"][1]["content"]) > 5000


def test_jsonl_workload_errors_name_the_line(tmp_path: Path) -> None:
    good = tmp_path / "w.jsonl"
    good.write_text(
        '{"messages":[{"role":"user","content":"hi"}]}\n\n'
        '{"messages":[{"role":"user","content":"yo"}],"max_tokens":5}\n'
    )
    wl = load_workload(str(good))
    assert wl.route == "chat" and len(wl.items) == 2
    assert b'"max_tokens":5' in encode_bodies(wl, model="m", max_tokens=9, stream=False)[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages":[{"role":"user","content":"hi"}]}\n{"nothing": 1}\n')
    with pytest.raises(WorkloadError, match=r"bad.jsonl:2"):
        load_workload(str(bad))
    with pytest.raises(WorkloadError, match="neither a built-in"):
        load_workload(str(tmp_path / "missing.jsonl"))
