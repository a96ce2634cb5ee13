"""`edgecloud bench` end to end against a stand-in provider with injected, known behaviour."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.bench.options import Scenario
from edgecloud.bench.results import BenchResults
from edgecloud.bench.runner import RunSettings, run_bench
from edgecloud.bench.stats import percentile
from edgecloud.bench.workloads import encode_bodies, load_workload
from edgecloud.supervise import free_port
from edgecloud.testing.polling import settle
from tests.bench.benchcli import run_bench_cli, start_bench_cli

pytestmark = pytest.mark.slow


def _bodies(max_tokens: int = 4) -> list[bytes]:
    return encode_bodies(
        load_workload("short-chat"), model="standin-model", max_tokens=max_tokens, stream=True
    )


def _run(url: str, settings: RunSettings, **kw: object) -> BenchResults:
    return asyncio.run(run_bench(url, settings, **kw))  # type: ignore[arg-type]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_bench_cli(*args, "--quiet", timeout=timeout)


def _settings(
    scenario: Scenario, levels: list[float], requests: int, max_tokens: int = 4, **more: Any
) -> RunSettings:
    """A run of short-chat requests without resource sampling."""
    return RunSettings(
        scenario=scenario,
        levels=levels,
        bodies=_bodies(max_tokens),
        workload="short-chat",
        requests=requests,
        sample_resources=False,
        **more,
    )


def test_percentiles_match_injected_latency(standin: Callable[..., str]) -> None:
    n = 200
    delays = [200.0 + 600.0 * (k + 0.5) / n for k in range(n)]  # uniform 200..800 ms
    random.Random(5).shuffle(delays)
    itl_ms, tokens = 10.0, 4
    base = standin(
        "--ttft-ms",
        ",".join(f"{d:.3f}" for d in delays),
        "--tokens",
        str(tokens),
        "--itl-ms",
        str(itl_ms),
    )
    res = _run(
        base,
        _settings("concurrency", [20], n, warmup=0),
    )
    assert res.complete, res.note
    (level,) = res.levels
    assert level.ok == n and res.token_count_source == "server_usage"
    assert all(r.output_tokens == tokens for r in res.records)
    # The truth: what the server did, timed on its side (a shared machine adds noise to the
    # injected delays; the client must report what really happened, within 2%).
    seen = httpx.get(f"{base}/stats").json()
    ttft_truth, e2e_truth = sorted(seen["ttft_ms"]), sorted(seen["e2e_ms"])
    assert len(ttft_truth) == n
    for q, name in ((50, "p50"), (90, "p90"), (95, "p95"), (99, "p99")):
        assert getattr(level.ttft_ms, name) == pytest.approx(percentile(ttft_truth, q), rel=0.02)
        assert getattr(level.e2e_ms, name) == pytest.approx(percentile(e2e_truth, q), rel=0.02)
        # ... and the server did inject the intended distribution.
        assert percentile(ttft_truth, q) == pytest.approx(percentile(sorted(delays), q), rel=0.05)
    assert level.ttft_ms.mean == pytest.approx(sum(ttft_truth) / n, rel=0.02)
    assert level.itl_ms.p50 == pytest.approx(itl_ms, rel=0.2)


def test_stall_shows_in_open_loop_latencies(standin: Callable[..., str]) -> None:
    stall_after, stall = 1.0, 1.0
    base = standin("--tokens", "2", "--stall-after-s", str(stall_after), "--stall-s", str(stall))
    res = _run(
        base,
        _settings("rate", [40], 120, warmup=0, seed=2),
    )
    assert res.complete, res.note
    recs = sorted(res.records, key=lambda r: r.scheduled_s or 0.0)
    assert len(recs) == 120 and all(r.ok for r in recs)
    s0 = recs[0].start_s  # the first request started the stand-in's clock
    in_stall = [
        r
        for r in recs
        if stall_after + 0.05 <= (r.scheduled_s or 0) - s0 < stall_after + stall - 0.05
    ]
    after = [r for r in recs if (r.scheduled_s or 0) - s0 > stall_after + stall + 0.3]
    assert len(in_stall) >= 20 and after
    for r in in_stall:
        # Latency counts from the schedule: a request scheduled during the stall waited for
        # (nearly) the rest of it, whatever its actual send time.
        left_ms = (stall_after + stall - ((r.scheduled_s or 0) - s0)) * 1000.0
        assert r.e2e_ms is not None and r.e2e_ms >= left_ms - 60
    # Open loop: the sends kept to the schedule during the stall.
    sent_in_stall = [r for r in in_stall if r.start_s - (r.scheduled_s or 0) < 0.1]
    assert len(sent_in_stall) >= 0.9 * len(in_stall)
    # And the latencies outside the stall stay small (the stall is visible, not smeared).
    assert percentile(sorted(r.e2e_ms or 0 for r in after), 50) < 200
    assert max(r.e2e_ms or 0 for r in in_stall) > 800


def test_knee_found_on_server_with_known_capacity(standin: Callable[..., str]) -> None:
    base = standin("--capacity", "4", "--service-ms", "100", "--tokens", "1")
    res = _run(
        base,
        _settings("concurrency", [1, 2, 4, 8, 16], 32, max_tokens=1),
    )
    assert res.complete, res.note
    assert res.knee is not None and res.knee.level == 4
    assert res.knee.reason == "throughput_plateau"
    by_level = {s.level: s for s in res.levels}
    # Capacity is 4 / 0.1 s = 40 requests/s.
    assert by_level[4].requests_per_s == pytest.approx(40, rel=0.25)
    assert by_level[16].requests_per_s == pytest.approx(40, rel=0.25)


@pytest.mark.parametrize(
    "mode,expect",
    [
        ("refused", "cannot connect"),
        ("unauthorized", "api-key-env"),
        ("html", "not with an OpenAI model list"),
        ("hang", "did not answer"),
    ],
)
def test_bad_targets_give_a_message_and_a_partial_file(
    standin: Callable[..., str], tmp_path: Path, mode: str, expect: str
) -> None:
    if mode == "refused":
        base = f"http://127.0.0.1:{free_port()}"
    else:
        base = standin("--mode", mode)
    out = tmp_path / "out.json"
    done = _cli(base, "--out", str(out), "--timeout", "3", "--requests", "2")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert expect in done.stderr.replace("\n", " ")
    res = BenchResults.model_validate_json(out.read_text())
    assert not res.complete and expect in res.note


def test_ctrl_c_writes_what_was_measured(standin: Callable[..., str], tmp_path: Path) -> None:
    base = standin("--ttft-ms", "50", "--tokens", "2")
    out = tmp_path / "partial.json"
    bench = start_bench_cli(
        base, "--concurrency", "2", "--duration", "60", "--out", str(out), "--quiet"
    )
    try:
        settle(lambda: [] if httpx.get(f"{base}/stats").json()["requests"] >= 12 else ["<12"],
               60)
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 130, err
    assert "Traceback" not in err
    res = BenchResults.model_validate_json(out.read_text())
    assert not res.complete and "interrupted" in res.note
    assert len(res.records) >= 8 and res.levels[0].ok >= 8


def test_token_counts_without_usage_come_from_a_tokenizer_or_chunks(
    standin: Callable[..., str], embedded_model_path: str
) -> None:
    base = standin("--tokens", "6", "--no-usage")
    plain = _run(base, _settings("single", [1], 3, max_tokens=8))
    assert plain.complete and plain.token_count_source == "chunks"
    assert all(r.output_tokens == 6 and r.token_source == "chunks" for r in plain.records)

    from edgecloud.bench.tokens import load_counter

    expected = load_counter(embedded_model_path)(" tok" * 6)  # what the stand-in streams
    counted = _run(
        base, _settings("single", [1], 3, max_tokens=8, tokenizer=embedded_model_path)
    )
    assert counted.complete and counted.token_count_source == "tokenizer"
    assert all(
        r.output_tokens == expected and r.token_source == "tokenizer" for r in counted.records
    )
    assert expected > 0
