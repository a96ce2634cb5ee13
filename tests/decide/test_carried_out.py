"""The decision carried out: `edgecloud decide --emit-gateway-config` drives a real gateway in
front of a real node and a stand-in cloud provider, and private data stays on the edge."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from edgecloud.supervise import ManagedProcess, edgecloud_command
from tests.gateway.gwrig import launch_gateway, launch_standin

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "decide"


@pytest.mark.slow
def test_the_emitted_hybrid_keeps_private_requests_on_the_edge(node: str, tmp_path: Path) -> None:
    started: list[ManagedProcess] = []
    try:
        cloud = launch_standin(tmp_path, started, "cloud")
        prices = yaml.safe_load((EXAMPLES / "prices.yaml").read_text())
        prices["edge"]["url_template"] = node + "/v1"
        prices["edge"]["assumed"] = {"capacity_rps": 1.0, "ttft_ms": 300, "e2e_ms": 3000}
        prices["cloud"]["url"] = cloud.v1
        prices["cloud"]["assumed"] = {"ttft_ms": 500, "e2e_ms": 4000}
        (tmp_path / "prices.yaml").write_text(yaml.safe_dump(prices))
        # Private data rules the cloud out, large contexts rule edge-only out: the hybrid.
        (tmp_path / "w.yaml").write_text(
            "requests_per_day: 20000\n"
            "tokens: {input_per_request: 400, output_per_request: 16, large_context_share: 0.1}\n"
            "slo: {ttft_ms: 2000, e2e_ms: 8000}\n"
            "compliance: {personal_data_share: 0.3}\n"
        )
        gw_file = tmp_path / "gateway.yaml"
        proc = subprocess.run(
            edgecloud_command(
                "decide",
                "--workload",
                str(tmp_path / "w.yaml"),
                "--prices",
                str(tmp_path / "prices.yaml"),
                "--emit-gateway-config",
                str(gw_file),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "120"},
        )
        assert proc.returncode == 0, proc.stderr
        assert "Recommended: hybrid" in proc.stdout
        gw = launch_gateway(tmp_path, started, yaml.safe_load(gw_file.read_text()))
        body = {
            "model": "auto",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Mail me at ana@example.org please."}],
        }
        r = httpx.post(gw.v1 + "/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["x-edgecloud-placement"] == "edge"
        assert cloud.received() == []  # the personal data never reached the cloud
    finally:
        for p in reversed(started):
            p.stop()
