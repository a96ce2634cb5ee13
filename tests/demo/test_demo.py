"""`edgecloud demo --quick` runs to the end, cleans up, and agrees with the gateway."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from edgecloud.demo.runner import pid_alive

pytestmark = pytest.mark.slow


def _gateway_counts(metrics_text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    pattern = re.compile(r"^edgecloud_gateway_requests_total\{(.*)\} ([0-9.e+]+)$")
    for line in metrics_text.splitlines():
        m = pattern.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            counts[labels["placement"]] += int(float(m.group(2)))
    return counts


def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "edgecloud", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = orjson.loads((out / "demo-summary.json").read_bytes())
    report = out / "demo-report.html"
    assert report.exists() and "Guarantees, measured" in report.read_text()

    # Every child process the demo started is gone.
    assert summary["child_pids"], "the demo recorded no children"
    assert not [pid for pid in summary["child_pids"] if pid_alive(pid)]

    # The guarantees held, measured two ways.
    s = summary["summary"]
    assert s["private_requests"] >= 5
    assert s["private_placed_in_cloud"] == 0
    assert s["cloud_link_private_marker_hits"] == 0
    assert s["cloud_link_bytes"] > 0  # the cloud did carry public traffic

    # Every phase did what it shows: offload under the burst, fallback in the edge outage,
    # refusals (fail closed) for private requests while the edge was down, except the e-mail
    # one, answered from the cloud with a surrogate (the byte scan above found no address).
    outcomes = summary["outcomes"]
    reasons = Counter(o["reason"] for o in outcomes)
    assert reasons["load.offload"] >= 1
    assert any(o["phase"] == "edge outage" and o["placement"] == "cloud" for o in outcomes)
    outage = [o for o in outcomes if o["phase"] == "edge outage" and o["private"]]
    assert [o["kind"] for o in outage if o["placement"] == "cloud"] == ["email"]
    assert all(o["reason"] == "privacy.pseudonymized" and o["status"] == 200
               for o in outage if o["placement"] == "cloud")
    assert all(o["placement"] == "refused" for o in outage if o["kind"] != "email")
    assert s["private_sent_as_surrogates"] == 1
    assert all(o["placement"] == "edge" for o in outcomes if o["phase"] == "cloud outage")

    # The screenshot step was read on the edge, by the node's projector made at demo start
    # (its image tokens are in the prompt), and none of its bytes crossed the cloud link (the
    # byte scan above also looks for slices of the screenshot's base64).
    shots = [o for o in outcomes if o["kind"] == "screenshot"]
    assert shots and all(o["placement"] == "edge" and o["status"] == 200 for o in shots)
    assert all(o["prompt_tokens"] > 64 for o in shots)  # the tiny projector: 64 image tokens
    assert s["screenshot"]["served_on_edge"] == len(shots)
    assert list((out / "cache").rglob("*.gguf")), "no projector written at demo start"
    assert "The screenshot step, on the edge" in report.read_text()

    # The report's numbers agree with the gateway's own metrics.
    gw = _gateway_counts((out / "gateway-metrics.txt").read_text())
    placed = Counter(o["placement"] for o in outcomes)
    assert gw["edge"] == placed["edge"]
    assert gw["cloud"] == placed["cloud"]
    assert sum(gw.values()) == len(outcomes)

    # The tiers were benched and decided on.
    assert (out / "bench-edge.json").exists() and (out / "bench-cloud.json").exists()
    assert (out / "decision.json").exists()
