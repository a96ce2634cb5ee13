"""The README's figures come from result files: the writer, the renderers and
`benchmarks/bench_report.py` (run as the program `make bench-report` runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgecloud.testing.figures import load_results, replace_marked, write_result
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
