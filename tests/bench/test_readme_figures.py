"""The README's figures come from result files: the writer, the renderers and
`benchmarks/bench_report.py` (run as the program `make bench-report` runs)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgecloud.testing.figures import (
    SAMPLE_CAP,
    digest_quantile,
    load_results,
    replace_marked,
    sample_digest,
    write_result,
)
from edgecloud.testing.figures_tables import render

REPO = Path(__file__).resolve().parents[2]

STREAMS_SUMMARY = {"runs": {
    "direct": [{"streams": 100, "ok": 100, "ttft_p50_ms": 2.0, "ttft_p99_ms": 3.0,
                "chunk_delay_p50_ms": 0.2, "chunk_delay_p99_ms": 1.1, "cpu_s": 0.4}],
    "edgecloud": [{"streams": 100, "ok": 99, "ttft_p50_ms": 2.7, "ttft_p99_ms": 4.5,
                   "chunk_delay_p50_ms": 0.3, "chunk_delay_p99_ms": 1.3, "cpu_s": 1.17}],
}}


def test_a_result_file_says_what_where_when_and_keeps_the_samples(tmp_path: Path) -> None:
    path = write_result("gateway_streams", summary=STREAMS_SUMMARY,
                        samples={"ttft_ms": [1.5, 2.5]}, params={"streams": [100]},
                        out_dir=tmp_path)
    doc = json.loads(path.read_text())
    assert path == tmp_path / "gateway_streams.json"
    assert doc["benchmark"] == "gateway_streams"
    assert doc["samples"] == {"ttft_ms": [1.5, 2.5]}
    assert doc["summary"] == STREAMS_SUMMARY
    assert doc["params"] == {"streams": [100]}
    assert doc["date"].endswith("+00:00")
    assert doc["machine"]["cores_logical"] >= 1 and "cpu" in doc["machine"]
    assert "hostname" not in doc["machine"]
    assert set(doc["git"]) == {"sha", "dirty"}
    assert doc["command"].startswith("python benchmarks/")
    assert load_results(tmp_path)["gateway_streams"] == doc


def test_only_marked_blocks_change_and_unknown_ones_are_reported() -> None:
    text = ("# Title\nkept\n<!-- bench-report:a -->\nold a\n<!-- /bench-report:a -->\nmiddle\n"
            "<!-- bench-report:b -->\nold b\n<!-- /bench-report:b -->\nend\n")
    new, left = replace_marked(text, {"a": "new a\n"})
    assert new == text.replace("old a", "new a")
    assert left == ["b"]


def test_the_streams_table_shows_the_measured_figures_and_their_source() -> None:
    doc = {"benchmark": "gateway_streams", "command": "python benchmarks/gateway_streams.py",
           "date": "2026-12-05T20:00:00+00:00", "git": {"sha": "abcdef1234567", "dirty": False},
           "machine": {"cores": 2, "cpu": "x", "load_1m_at_start": 1.0},
           "summary": STREAMS_SUMMARY, "samples": {}}
    text = render(doc)
    edge_row = next(line for line in text.splitlines() if line.startswith("| **edgecloud"))
    assert "+0.7 ms" in edge_row and "1.3 ms" in edge_row and "1.17 s" in edge_row
    assert "| 1 |" in edge_row  # one stream failed or was cut
    assert "`python benchmarks/gateway_streams.py`" in text and "abcdef1234" in text


def test_side_by_side_ratios_are_computed_from_the_medians() -> None:
    medians = {"peer": {"1": {"tok_s": 40.0}}, "edgecloud": {"1": {"tok_s": 60.0}}}
    doc = {"benchmark": "node_vs_llama_cpp_server", "summary": {
        "peer": "peer", "ours": "edgecloud", "keys": ["tok_s"], "medians": medians}}
    assert "| 1 | output tokens/s | 40.0 | 60.0 | 1.50x |" in render(doc)


def test_bench_report_rewrites_the_readme_and_check_sees_the_difference(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_result("gateway_streams", summary=STREAMS_SUMMARY, samples={}, out_dir=results)
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- bench-report:gateway_streams -->\nby hand\n"
                      "<!-- /bench-report:gateway_streams -->\n")

    def report(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_report.py"),
                               "--readme", str(readme), "--results", str(results), *extra],
                              capture_output=True, text=True, timeout=60)

    assert report("--check").returncode == 1
    assert "by hand" in readme.read_text()
    assert report().returncode == 0
    assert "by hand" not in readme.read_text() and "1.17 s" in readme.read_text()
    assert report("--check").returncode == 0


def _doc(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {"benchmark": name, "command": f"python benchmarks/{name}.py",
            "date": "2026-12-05T20:00:00+00:00", "git": {"sha": "abcdef1234567", "dirty": False},
            "machine": {"cores": 2, "cpu": "x", "load_1m_at_start": 1.0}, "summary": summary,
            "samples": {}}


def _download(link: str, plain: float, stage: float, update: float) -> dict[str, Any]:
    return {"link": link, "plain_download_s": plain,
            "agent_refresh_download_verify_stage_s": stage,
            "agent_update_with_activation_s": update,
            "stage_ratio_vs_plain": round(stage / plain, 2),
            "update_ratio_vs_plain": round(update / plain, 2)}


def test_the_ota_table_orders_links_by_speed_with_loopback_last() -> None:
    summary = {"cpus": 2, "download": _download("loopback", 0.29, 0.4, 1.35),
               "download_link_100MBps": _download("100 MB/s", 2.55, 2.55, 3.5),
               "download_link_50MBps": _download("50 MB/s", 5.08, 5.07, 5.9),
               "rollout": {"agents": 2, "final_stage": "stable", "publish_to_100pct_s": 7.6,
                           "agent_activate_s": [0.9, 1.1]},
               "poll": {"simulated_agents": 1000, "offered_req_s": 3000, "held_req_s": 2916,
                        "server_cpu_cores": 0.3, "p50_ms": 232.0, "p99_ms": 951.0,
                        "errors": 0}}
    text = render(_doc("ota_update", summary))
    rows = [line for line in text.splitlines() if line.startswith("| emulated")
            or line.startswith("| loopback")]
    assert [r.split(" | ")[0] for r in rows] == ["| emulated 50 MB/s", "| emulated 100 MB/s",
                                                 "| loopback (same cores)"]
    assert rows[0].endswith("| 5.08 s | 5.07 s | 1.00x | 5.90 s | **1.16x** |")
    assert rows[1].endswith("| 2.55 s | 2.55 s | 1.00x | 3.50 s | 1.37x (not met) |")
    assert "2,916 of 3,000 req/s" in text
    assert "7.6 s (the release ends stable); each agent's activation 0.9 s, 1.1 s." in text


def test_the_aiperf_table_gives_each_tools_cpu_and_error_against_the_node() -> None:
    truth = {"output_tok_s": 100.0, "e2e_p50_ms": 200.0, "ttft_p50_ms": 50.0}
    runs = [{"tool": "edgecloud bench", "tool_cpu_share": share, "node_truth": truth,
             "tool_figures": {"output_tok_s": 100.0, "e2e_p50_ms": 200.4, "ttft_p50_ms": 51.0}}
            for share in (0.002, 0.004)]
    runs.append({"tool": "aiperf", "tool_cpu_share": 0.48, "node_truth": truth,
                 "tool_figures": {"output_tok_s": 90.0, "e2e_p50_ms": 230.0,
                                  "ttft_p50_ms": 55.0}})
    text = render(_doc("bench_vs_aiperf", {"runs": runs}))
    assert "| `edgecloud bench` (2 runs) | 0.3% | +0.0% | +0.2% | +2.0% |" in text
    assert "| `aiperf` (1 run) | 48.0% | -10.0% | +15.0% | +10.0% |" in text


def test_the_soak_table_shows_growth_per_part_and_the_invariants() -> None:
    summary = {"minutes": 10, "requests": 3427, "served": 2938, "failed": 0, "leaks": [],
               "stuck_after": [],
               "parts": {"gateway": {"rss_mb": [100.0, 100.8], "rss_growth_pct": 0.8,
                                     "fds": [30, 31], "tasks": [12, 12]},
                         "agent": {"rss_mb": [40.0, 40.0], "rss_growth_pct": 0.0,
                                   "fds": [9, 9], "tasks": [None, None]}}}
    text = render(_doc("chaos_soak", summary))
    assert text.startswith("10 minutes: 3,427 requests, 2,938 served")
    assert "0 failed, 0 leaks, stuck after it: nothing." in text
    assert "| gateway | 100.0 | 100.8 | +0.8% | 30 → 31 | 12 → 12 |" in text
    assert "| agent | 40.0 | 40.0 | +0.0% | 9 → 9 | – |" in text


def test_long_sample_series_are_kept_as_a_digest_that_gives_the_figures_back() -> None:
    short = [3.0, 1.0, 2.0]
    assert sample_digest(short) == short
    values = [float((i * 7919) % 10_000) for i in range(10_000)]  # 0..9999, shuffled
    kept = sample_digest(values)
    assert isinstance(kept, dict)
    assert kept["n"] == 10_000 and len(kept["sorted_at_ranks"]) == SAMPLE_CAP
    assert kept["median"] == statistics.median(values) and kept["mean"] == 4999.5
    ordered = sorted(values)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert digest_quantile(kept, q) == ordered[round(q * (len(ordered) - 1))]
    assert len(json.dumps(kept)) < len(json.dumps(values)) / 5


def test_the_fleet_table_puts_the_api_processes_beside_todays_server() -> None:
    ms = {"p50": 14.1, "p99": 31.2}
    summary = {
        "devices": 100_000, "polls_per_s": 55.6, "api_idle_cores": 0.005,
        "steady": {"reports_ok": 6666, "errors": {}, "api_cpu_ms_per_report": 2.37,
                   "api_marginal_cpu_ms_per_report": 2.28, "pg_cpu_ms_per_report": 0.42,
                   "report_ms": ms, "poll_ms": {"p50": 0.3, "p99": 6.8}},
        "baseline": {"reports_ok": 6666, "errors": {"503": 1}, "api_cpu_ms_per_report": 2.07,
                     "api_marginal_cpu_ms_per_report": 2.02,
                     "report_ms": {"p50": 11.0, "p99": 38.9}},
        "ratio_cpu_per_report_new_over_baseline": 1.14,
        "projected_cores": {"100000": {"api_cores": 0.13, "postgres_cores": 0.02}},
        "rollout": {"final": {"stage": "stable", "percent": 100}, "seconds": 31.7,
                    "steps": [["advance", 100], ["complete", 100], ["advance", 25]],
                    "killed": {"name": "api-a", "at_percent": 25}, "reports_ok": 1725,
                    "errors": {}, "failovers": 571, "acknowledged_reports_missing_in_db": 0,
                    "api_bytes_served": 0, "api_tuf_requests": {"metadata": 0, "targets": 0},
                    "cdn_bytes_served": {"targets": 49_500_000, "metadata": 4_000_000},
                    "cdn_cache_hits": 996, "cdn_requests": 1000}}
    doc = _doc("fleet_scale", summary)
    doc["params"] = {"steady_s": 120.0}
    text = render(doc)
    assert "| 100,000 devices, 55.6 polls/s, 120 s |" in text
    assert "| reports, errors | 6,666, **0** | 6,666, 1 |" in text
    assert "2.07 ms (2.02 ms): **1.14x** |" in text
    assert "**0.13 API cores + 0.02 PostgreSQL cores for 100,000 devices**" in text
    assert "steps `advance 25`, `advance 100`, `complete 100`;" in text
    assert "api-a SIGKILLed at 25%" in text and "**0 acknowledged reports missing**" in text
    assert "49.5 MB of models" in text and "996 of 1,000 requests" in text


def test_the_shared_state_table_marks_each_target_met_or_not() -> None:
    wrk = {"p99_ms": 1.0, "errors": 0.0}
    summary = {
        "correctness": {
            "rpm60": {"window_s": 90.0, "attempts": 4995, "answered_first_60s": 60,
                      "most_in_any_60s": 60, "errors": 0},
            "cap_capped": {"cap_usd": 0.5, "spent_usd": 0.468, "answered": 26,
                           "refused_429": 7558, "other": 0},
            "cap_free": {"cap_usd": 3.0, "spent_usd": 2.97, "answered": 79,
                         "refused_429": 7783, "other": 0}},
        "cost": {"memory/c1": {"rps": 4000, "p50_ms": 0.25, **wrk},
                 "redis/c1": {"rps": 3000, "p50_ms": 0.5, **wrk},
                 "memory/c16": {"rps": 5000, "p50_ms": 3.0, "gateway_cpu_us_per_request": 190,
                                "redis_cpu_us_per_request": 0, **wrk},
                 "redis/c16": {"rps": 4100, "p50_ms": 3.5, "gateway_cpu_us_per_request": 200,
                               "redis_cpu_us_per_request": 40, **wrk},
                 "redis_ping_p50_ms": 0.07, "rps_ratio_c16": 0.82, "added_p50_ms_c1": 0.25},
        "workers": {"nginx-2": {"rps": 44000, **wrk}, "edgecloud-1": {"rps": 9600, **wrk},
                    "edgecloud-w2": {"rps": 11000, **wrk}, "w2_vs_nginx2": 0.25,
                    "w1_vs_nginx2": 0.218},
        "litellm": {"window_s": 90.0, "attempts": 146, "answered_first_60s": 128,
                    "most_in_any_60s": 128, "timed_out_10s": 18},
        "vs_litellm": {"edgecloud_redis": {"rps": 3900, **wrk}, "litellm": {"rps": 80, **wrk},
                       "edgecloud_redis_budget": {"rps": 4100, **wrk},
                       "ratio": 48.75, "ratio_budget": 51.25},
    }
    text = render(_doc("gateway_state", summary))
    assert "**60** answers in the first 60 s, **60** at most in any 60 s" in text
    assert "spent **0.468** USD (26 answered), then 429 (7,558)" in text
    assert "4,100 / 5,000 = **0.82x**" in text
    assert "= **+0.250 ms**" in text
    assert "190 → 200 µs, 40 µs" in text
    assert "3,900 / 80 = 49x (not met)" in text and "4,100 / 80 = **51x**" in text
    assert "11,000 / 44,000 = 0.25x (not met)" in text
    assert "**128** answers in the first 60 s" in text
