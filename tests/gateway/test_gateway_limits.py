"""Keys as tenants and the budget, through real gateway processes sharing a real redis-server."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.supervise import edgecloud_command
from tests.gateway.gwrig import Gateway, Standin, endpoint, launch_standin, stopped_after

KEY_A, KEY_B = "ec-test-key-a", "ec-test-key-b"
CHAT = {"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _config(edge: Standin | None, cloud: Standin, keys: list[dict[str, Any]],
            redis: bool, **policy: Any) -> dict[str, Any]:
    eps = [endpoint("cloud", "cloud", cloud.v1,
                    price={"input_per_mtok": 1.0, "output_per_mtok": 2.0})]
    if edge is not None:
        # The edge is dearer here, so that the cost rule puts the cloud first.
        eps.insert(0, endpoint("edge", "edge", edge.v1,
                               price={"input_per_mtok": 5.0, "output_per_mtok": 5.0}))
    cfg: dict[str, Any] = {"endpoints": eps, "auth": {"keys": keys}, "policy": policy,
                           "limits": {"health_interval_s": 0.5}}
    if redis:
        cfg["state"] = {"backend": "redis", "prefix": "gwtest"}
    return cfg


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Standin, Standin, Path]]:
    tmp = tmp_path_factory.mktemp("limits")
    with stopped_after() as started:
        edge = launch_standin(tmp, started, "edge", "edge-model")
        cloud = launch_standin(tmp, started, "cloud", "cloud-model")
        yield edge, cloud, tmp


@pytest.fixture
def gateways(start_gateway: Callable[..., Gateway], redis_url: str) -> Callable[..., Gateway]:
    """Start gateways that share the test's Redis (stopped when the test ends)."""

    def start(config: dict[str, Any], *extra: str) -> Gateway:
        return start_gateway(config, *extra, env={"EDGECLOUD_REDIS_URL": redis_url})

    return start


def _post(gw: Gateway, key: str, **headers: str) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", json=CHAT, timeout=10,
                      headers={"authorization": f"Bearer {key}", **headers})


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_rpm_refuses_with_429_retry_after_and_openai_headers(
        clouds: tuple[Standin, Standin, Path], gateways: Callable[..., Gateway],
        backend: str) -> None:
    edge, cloud, _ = clouds
    keys = [{"name": "team-a", "sha256": _sha(KEY_A), "limits": {"rpm": 3, "tpm": 100000}},
            {"name": "team-b", "sha256": _sha(KEY_B)}]
    gw = gateways(_config(edge, cloud, keys, backend == "redis"))
    answers = [_post(gw, KEY_A) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0", "0"]
    for r in answers:
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-limit-tokens"] == "100000"
        assert "x-ratelimit-reset-requests" in r.headers
        assert "x-ratelimit-remaining-tokens" in r.headers
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 61  # Redis: 100 ms buckets
    # Another key is not held back, and an unlimited key gets no x-ratelimit headers.
    other = _post(gw, KEY_B)
    assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers
    metrics = httpx.get(gw.base + "/metrics").text
    assert 'edgecloud_gateway_key_limited_total{key="team-a",limit="requests"} 1.0' in metrics
    assert 'edgecloud_gateway_key_requests_total{key="team-b"' in metrics


def test_limits_are_shared_by_gateways_on_one_redis(
        clouds: tuple[Standin, Standin, Path], gateways: Callable[..., Gateway]) -> None:
    edge, cloud, _ = clouds
    keys = [{"name": "team-a", "sha256": _sha(KEY_A), "limits": {"rpm": 4}}]
    gws = [gateways(_config(edge, cloud, keys, True)) for _ in range(2)]
    codes = [_post(gws[i % 2], KEY_A).status_code for i in range(8)]
    assert codes.count(200) == 4 and codes.count(429) == 4


def test_max_parallel_and_tpm(clouds: tuple[Standin, Standin, Path],
                              gateways: Callable[..., Gateway]) -> None:
    edge, cloud, _ = clouds
    keys = [{"name": "team-a", "sha256": _sha(KEY_A), "limits": {"tpm": 5}}]
    gw = gateways(_config(edge, cloud, keys, True))
    big = {**CHAT, "messages": [{"role": "user", "content": "word " * 40}]}
    r = httpx.post(gw.v1 + "/chat/completions", json=big, timeout=10,
                   headers={"authorization": f"Bearer {KEY_A}"})
    assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
    assert r.headers["x-ratelimit-limit-tokens"] == "5"


def test_spent_key_stays_on_the_edge_and_cloud_only_gets_insufficient_quota(
        clouds: tuple[Standin, Standin, Path], gateways: Callable[..., Gateway]) -> None:
    edge, cloud, _ = clouds
    keys = [{"name": "team-a", "sha256": _sha(KEY_A), "limits": {"monthly_cloud_usd": 0}},
            {"name": "team-b", "sha256": _sha(KEY_B)}]
    cloud.clear()
    gw = gateways(_config(edge, cloud, keys, True))
    free = _post(gw, KEY_B)
    assert free.headers["x-edgecloud-placement"] == "cloud"  # the cheaper one, for team-b
    spent = _post(gw, KEY_A)
    assert spent.status_code == 200
    assert spent.headers["x-edgecloud-placement"] == "edge"
    assert spent.headers["x-edgecloud-reason"] == "budget.key"
    only_cloud = gateways(_config(None, cloud, keys, True))
    r = _post(only_cloud, KEY_A)
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    assert len(cloud.received()) == 1  # team-b's request alone reached the cloud


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_hard_budget_stops_cloud_spend(clouds: tuple[Standin, Standin, Path],
                                       gateways: Callable[..., Gateway], backend: str) -> None:
    _, cloud, _ = clouds
    keys = [{"name": "team-a", "sha256": _sha(KEY_A)}]
    # One answer of the stand-in costs about 2e-5 USD: the cap lets a few through, then none.
    cap = 5e-5
    gw = gateways(_config(None, cloud, keys, backend == "redis",
                          budget={"monthly_cloud_usd": cap, "hard": True}))
    codes = [_post(gw, KEY_A).status_code for _ in range(12)]
    assert codes[0] == 200 and codes[-1] == 429
    assert codes == sorted(codes)  # once refused, always refused
    spend = _metric(gw, 'edgecloud_gateway_key_cloud_spend_usd_total{key="team-a"}')
    assert spend <= cap


def _metric(gw: Gateway, line_start: str) -> float:
    for line in httpx.get(gw.base + "/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def test_open_relay_refused_off_loopback(clouds: tuple[Standin, Standin, Path]) -> None:
    edge, cloud, tmp = clouds
    cfg = tmp / "anon.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(_config(edge, cloud, [], False)))
    out = subprocess.run(edgecloud_command("gateway", "--config", str(cfg), "--host", "0.0.0.0",
                                           "--port", "1"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "auth.keys is empty" in out.stderr and "--allow-anonymous" in out.stderr


def test_workers_with_memory_state_and_limits_are_refused(
        clouds: tuple[Standin, Standin, Path]) -> None:
    edge, cloud, tmp = clouds
    keys = [{"name": "team-a", "sha256": _sha(KEY_A), "limits": {"rpm": 5}}]
    cfg = tmp / "workers.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(_config(edge, cloud, keys, False)))
    out = subprocess.run(edgecloud_command("gateway", "--config", str(cfg), "--workers", "2",
                                           "--check"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "state.backend: redis" in out.stderr and "team-a" in out.stderr


def test_workers_share_one_port_and_limits_stay_exact(
        clouds: tuple[Standin, Standin, Path], gateways: Callable[..., Gateway]) -> None:
    edge, cloud, _ = clouds
    keys = [{"name": "team-a", "sha256": _sha(KEY_A), "limits": {"rpm": 6}}]
    gw = gateways(_config(edge, cloud, keys, True), "--workers", "2")
    codes = []
    for _ in range(12):  # a new connection each: the kernel spreads them over the workers
        codes.append(_post(gw, KEY_A).status_code)
    assert codes.count(200) == 6 and codes.count(429) == 6
    # Two processes answer on the port: the parent and its two workers.
    import psutil

    children = psutil.Process(gw.proc.pid).children()
    assert len(children) == 2
    port = int(gw.base.rsplit(":", 1)[1])
    clients = [httpx.Client() for _ in range(16)]
    try:
        for c in clients:
            assert c.get(gw.base + "/healthz").status_code == 200
        accepted = [sum(1 for k in ch.net_connections()
                        if k.status == "ESTABLISHED" and k.laddr.port == port)
                    for ch in children]
        assert sum(accepted) == 16 and min(accepted) >= 1  # the kernel spread them over both
    finally:
        for c in clients:
            c.close()


def test_workers_answer_one_merged_metrics(
        clouds: tuple[Standin, Standin, Path], gateways: Callable[..., Gateway]) -> None:
    """Whichever worker takes a scrape, it counts every worker's requests (at most about
    SHARE_EVERY_S late); gauges are per worker."""
    import time

    from prometheus_client.parser import text_string_to_metric_families

    edge, cloud, _ = clouds
    keys = [{"name": "team-a", "sha256": _sha(KEY_A)}]
    gw = gateways(_config(edge, cloud, keys, True), "--workers", "2")
    for _ in range(10):  # a new connection each: the kernel spreads them over the workers
        assert _post(gw, KEY_A).status_code == 200

    def scrape() -> tuple[float, set[str]]:
        fams = {f.name: f for f in text_string_to_metric_families(
            httpx.get(gw.base + "/metrics", timeout=10).text)}
        answered = sum(s.value for s in fams["edgecloud_gateway_requests"].samples
                       if s.name.endswith("_total"))
        workers = {s.labels["worker"] for s in fams["edgecloud_gateway_state_up"].samples}
        return answered, workers

    deadline = time.monotonic() + 15
    seen: list[tuple[float, set[str]]] = []
    while time.monotonic() < deadline:
        seen.append(scrape())
        if len(seen) >= 8 and all(s == (10.0, {"0", "1"}) for s in seen[-8:]):
            break
        time.sleep(0.25)
    assert seen[-8:] == [(10.0, {"0", "1"})] * 8, seen


def test_check_names_the_line_of_a_bad_state_or_limits_block(tmp_path: Path) -> None:
    from edgecloud.gateway.config import parse_config
    from edgecloud.gateway.errors import ConfigError

    base = ("endpoints:\n  - {name: c, tier: cloud, url: 'https://x.example/v1'}\n"
            "auth:\n  keys:\n    - name: team-a\n      sha256: " + _sha(KEY_A) + "\n"
            "      limits: {rpm: 10}\n"
            "state:\n  backend: redis\n")
    assert parse_config(base).state.backend == "redis"
    for old, new, where in (("rpm: 10", "rpm: 0", "x.yaml:7: auth.keys.0.limits.rpm"),
                            ("backend: redis", "backend: mongo", "x.yaml:9: state.backend"),
                            ("{rpm: 10}", "{rpm: 10, burst: 3}", "x.yaml:7: auth.keys.0.limits")):
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            parse_config(base.replace(old, new), "x.yaml")
    out = subprocess.run(edgecloud_command("gateway", "--check", "--config",
                                           str(_write(tmp_path, base))),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "state: redis" in out.stderr and "team-a" in out.stderr


def _write(tmp: Path, text: str) -> Path:
    path = tmp / "check.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_concurrent_gateways_never_pass_a_cap(clouds: tuple[Standin, Standin, Path],
                                              gateways: Callable[..., Gateway]) -> None:
    """Two gateways on one Redis, 8 clients at once: with max_tokens set, the reservation
    covers the actual cost, so the documented bound is zero overshoot."""
    from concurrent.futures import ThreadPoolExecutor

    _, cloud, _ = clouds
    cap = 2e-4  # about ten answers of the stand-in
    keys = [{"name": "team-a", "sha256": _sha(KEY_A), "limits": {"monthly_cloud_usd": cap}}]
    gws = [gateways(_config(None, cloud, keys, True)) for _ in range(2)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: _post(gws[i % 2], KEY_A).status_code, range(60)))
    assert set(codes) == {200, 429} and codes.count(200) >= 1
    spent = sum(_metric(gw, 'edgecloud_gateway_key_cloud_spend_usd_total{key="team-a"}')
                for gw in gws)
    assert spent <= cap
