"""decide reads what `edgecloud bench` writes against a real node."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from edgecloud.supervise import edgecloud_command


@pytest.mark.slow
def test_decide_reads_a_real_bench_run(node: str, tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "120"}
    out = tmp_path / "edge.json"
    bench = subprocess.run(
        edgecloud_command(
            "bench",
            node,
            "--concurrency",
            "1,2",
            "--requests",
            "4",
            "--max-tokens",
            "16",
            "--label",
            "edge",
            "--out",
            str(out),
            "-q",
        ),
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    wl = tmp_path / "w.yaml"
    wl.write_text(
        "requests_per_day: 2000\n"
        "tokens: {input_per_request: 40, output_per_request: 16}\n"
        "slo: {ttft_ms: 20000, e2e_ms: 60000}\n"
    )
    report = tmp_path / "d.html"
    proc = subprocess.run(
        edgecloud_command(
            "decide",
            "--workload",
            str(wl),
            "--bench",
            str(out),
            "--report",
            str(report),
            "--json",
            str(tmp_path / "d.json"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Recommended:" in proc.stdout
    html = report.read_text()
    assert "measured (" in html and html.count("<svg") == 4
