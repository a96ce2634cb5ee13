"""decide against the real neighbours: the gateway loads what decide emits, and decide reads
what `edgecloud bench` writes against a real node. Each runs once its part is on the branch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
from decide_samples import inputs, workload

from edgecloud.decide.decision import evaluate_options
from edgecloud.decide.gateway_config import gateway_config, render_gateway_yaml
from edgecloud.decide.tco import OPTIONS
from edgecloud.supervise import edgecloud_command


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


needs_gateway = pytest.mark.skipif(
    _missing("edgecloud.gateway.config"), reason="the gateway is not on this branch yet"
)
needs_bench = pytest.mark.skipif(
    _missing("edgecloud.bench.app"), reason="edgecloud bench is not on this branch yet"
)


@needs_gateway
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("strict", [True, False])
def test_the_gateway_loads_the_emitted_config(tmp_path: Path, option: str, strict: bool) -> None:
    from edgecloud.gateway import config as gateway

    rule = {"region": "eu", "share": 0.2, "allowed": ["eu-central-1", "device"]}
    comp = {"personal_data_share": 0.3, "strict": strict, "residency": [rule]}
    i = inputs(workload(compliance=comp, users={"regions": {"eu west": 0.6, "us": 0.4}}))
    plan = evaluate_options(i)[option].cost.years[0]  # type: ignore[index]
    path = tmp_path / "gateway.yaml"
    path.write_text(render_gateway_yaml(gateway_config(i, option, plan), option, "w"))  # type: ignore[arg-type]
    cfg = gateway.load_config(path)
    tiers = {e.tier for e in cfg.endpoints}
    want = {"edge": {"edge"}, "cloud": {"cloud"}, "hybrid": {"edge", "cloud"}}[option]
    if plan.boxes == 0:  # not strict: nothing is bound to the edge, the hybrid has no boxes
        want = want - {"edge"}
    assert tiers == want
    assert len(cfg.endpoints) == plan.boxes + (option != "edge")
    assert cfg.policy.residency == {"eu": ["eu-central-1", "device"]}


@needs_bench
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
