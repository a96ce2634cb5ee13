"""The dashboard and the alert rules reference only metrics that the code really exports:
checked against the live `/metrics` of a real node, gateway and fleet server."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from edgecloud.deploy import metrics as m
from edgecloud.deploy.autoscaling import adapter_rules, inflight_query
from edgecloud.deploy.dashboard import dashboard, exprs
from edgecloud.deploy.monitoring import alert_rules
from edgecloud.deploy.values import Values, parse_values
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port

NAME = re.compile(r"\b(edgecloud_[a-z0-9_]+)")


def _rendered_queries() -> list[str]:
    values = Values()
    hpa = parse_values("node: {autoscaling: {mode: hpa}}")
    rules = [r["expr"] for g in alert_rules(values)["groups"] for r in g["rules"]]
    adapter = [r["metricsQuery"] for r in adapter_rules(hpa)["rules"]]
    return [*exprs(dashboard()), *rules, inflight_query(values), *adapter]


def test_every_rendered_query_uses_only_catalogued_metrics() -> None:
    used = {n for q in _rendered_queries() for n in NAME.findall(q)}
    assert used, "no edgecloud metric found in the rendered queries"
    assert used <= m.known_series(), sorted(used - m.known_series())
    # And nothing in the catalogue is dead weight.
    unused = [x.name for x in m.ALL if not any(s in used for s in x.series())]
    assert not unused


def exported_series(text: str) -> set[str]:
    """Every sample name a Prometheus text exposition can produce, from its # TYPE lines."""
    out: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["#", "TYPE"]:
            fam, kind = parts[2], parts[3]
            if kind == "counter":
                out |= {fam, fam if fam.endswith("_total") else f"{fam}_total"}
            elif kind in ("histogram", "gaugehistogram"):
                out |= {f"{fam}_bucket", f"{fam}_count", f"{fam}_sum"}
            elif kind == "summary":
                out |= {fam, f"{fam}_count", f"{fam}_sum"}
            else:
                out.add(fam)
        elif line and not line.startswith("#"):
            out.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return out


def _require_command(*words: str) -> None:
    """The command imports and answers --help; a CLI that fails to import fails the test."""
    proc = subprocess.run(edgecloud_command(*words, "--help"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"`edgecloud {' '.join(words)} --help` failed: {proc.stderr}"


def _missing(component: m.Component, text: str) -> list[str]:
    have = exported_series(text)
    return [s for x in m.by_component(component) for s in x.series() if s not in have]


@pytest.mark.slow
def test_node_exports_every_node_metric_the_files_use(request: pytest.FixtureRequest) -> None:
    _require_command("serve")
    base = request.getfixturevalue("node")
    httpx.post(f"{base}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
    text = httpx.get(f"{base}/metrics", timeout=10).text
    assert not _missing("node", text)


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[str]:
    _require_command("serve")
    _require_command("gateway")
    node = request.getfixturevalue("node")
    tmp = tmp_path_factory.mktemp("gw")
    config = tmp / "gateway.yaml"
    config.write_text(yaml.safe_dump({"endpoints": [{
        "name": "edge-local", "tier": "edge", "url": f"{node}/v1", "region": "device",
        "capabilities": ["text"], "max_concurrency": 2}]}))
    port = free_port()
    proc = ManagedProcess(
        edgecloud_command("gateway", "--port", str(port), "--config", str(config)),
        f"http://127.0.0.1:{port}/healthz", log_path=str(tmp / "gateway.log"), name="gateway")
    proc.start()
    try:
        proc.wait_ready(timeout_s=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.mark.slow
def test_gateway_exports_every_gateway_metric_the_files_use(gateway: str) -> None:
    body = {"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=60)
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    assert not _missing("gateway", text)


@pytest.mark.slow
@pytest.mark.parametrize("extra", ["", "node: {port: 9000, autoscaling: {max_replicas: 4}}"])
def test_rendered_gateway_config_passes_the_gateway_own_check(tmp_path: Path, extra: str) -> None:
    _require_command("gateway")
    from edgecloud.deploy.workloads import gateway_config_text

    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_config_text(parse_values(extra)))
    proc = subprocess.run(edgecloud_command("gateway", "--check", "--config", str(config)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_fleet_server_exports_every_fleet_metric_the_files_use(tmp_path: Path) -> None:
    _require_command("fleet", "serve")
    _require_command("release", "init")
    repo = tmp_path / "repo"
    init = subprocess.run(edgecloud_command("release", "init", str(repo)),
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    port = free_port()
    token = "deploy-test-operator-token"
    with ManagedProcess(
        edgecloud_command("fleet", "serve", "--repo", str(repo), "--port", str(port),
                          "--db", f"sqlite:///{tmp_path / 'fleet.db'}"),
        f"http://127.0.0.1:{port}/healthz", log_path=str(tmp_path / "fleet.log"), name="fleet",
        env={"EDGECLOUD_FLEET_TOKEN": token},
    ):
        resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                         headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    assert not _missing("fleet", resp.text)


def test_exported_series_reads_the_text_format() -> None:
    text = (
        "# HELP a_total x\n# TYPE a_total counter\na_total{route=\"/\"} 1\n"
        "# TYPE b_seconds histogram\nb_seconds_bucket{le=\"1\"} 0\n"
        "# TYPE c gauge\n# TYPE d counter\n"
    )
    assert exported_series(text) >= {"a_total", "b_seconds_bucket", "b_seconds_sum",
                                     "b_seconds_count", "c", "d_total"}
