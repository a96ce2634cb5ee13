"""`edgecloud decide` as a user runs it: a real process, files written, clear errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from edgecloud.gateway.config import parse_config
from edgecloud.supervise import edgecloud_command

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "decide"
SEED = [
    "--workload",
    str(EXAMPLES / "workload.yaml"),
    "--prices",
    str(EXAMPLES / "prices.yaml"),
    "--bench",
    f"edge={EXAMPLES / 'bench-edge.json'}",
    "--bench",
    f"cloud={EXAMPLES / 'bench-cloud.json'}",
]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        edgecloud_command("decide", *args), capture_output=True, text=True, timeout=120, env=env
    )


def test_seed_case_end_to_end(tmp_path: Path) -> None:
    report, out, gw = tmp_path / "d.html", tmp_path / "d.json", tmp_path / "gw.yaml"
    proc = _run(
        *SEED, "--report", str(report), "--json", str(out), "--emit-gateway-config", str(gw)
    )
    assert proc.returncode == 0, proc.stderr
    assert "Recommended: edge-only" in proc.stdout
    assert "fails compliance" in proc.stdout

    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 4
    # Self-contained: nothing loaded from elsewhere, and ids unique across the charts.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))

    data = json.loads(out.read_text())
    assert data["recommended"] == "edge"
    assert 340_000 < data["options"]["edge"]["cost"]["tco"] < 360_000
    assert data["options"]["cloud"]["feasible"] is False
    assert data["reasons"][0]["rank"] == 1

    cfg = parse_config(gw.read_text(), str(gw))
    assert {e.tier for e in cfg.endpoints} == {"edge"}
    assert cfg.policy.privacy.action == "edge_only"


def test_without_prices_or_bench_uses_the_documented_defaults() -> None:
    proc = _run("--workload", str(EXAMPLES / "workload.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "Recommended:" in proc.stdout


def test_bad_input_names_the_field_and_line_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "w.yaml"
    text = (EXAMPLES / "workload.yaml").read_text()
    bad.write_text(text.replace("peak_to_average: 2.5", "peak_to_average: 0.5"))
    line = next(i for i, s in enumerate(bad.read_text().splitlines(), 1) if "peak_to" in s)
    proc = _run("--workload", str(bad))
    assert proc.returncode == 2
    assert f"w.yaml:{line}: peak_to_average" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_file_and_mismatched_bench(tmp_path: Path) -> None:
    proc = _run("--workload", str(tmp_path / "none.yaml"))
    assert proc.returncode == 2 and "file not found" in proc.stderr
    other = tmp_path / "cloud.json"
    data = json.loads((EXAMPLES / "bench-cloud.json").read_text())
    data["model"] = "another-model"
    other.write_text(json.dumps(data))
    proc = _run(
        *SEED[:4], "--bench", f"edge={EXAMPLES / 'bench-edge.json'}", "--bench", f"cloud={other}"
    )
    assert proc.returncode == 2
    assert "different models" in proc.stderr and "Traceback" not in proc.stderr


def test_the_report_draws_in_a_browser(tmp_path: Path) -> None:
    from edgecloud.html_report.screenshot import BrowserMissing, find_chromium, screenshot_html

    if find_chromium() is None:
        pytest.skip("no headless Chromium here")
    report = tmp_path / "d.html"
    proc = _run(*SEED, "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    try:
        png = screenshot_html(report, tmp_path / "d.png", height=3000)
    except BrowserMissing:
        pytest.skip("no headless Chromium here")
    assert png.stat().st_size > 50_000  # a drawn page, not a blank one
