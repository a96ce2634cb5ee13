"""Faults of the shared state and of the edge's return: a real redis-server killed with -9 under
load, and a real node that becomes ready after the gateway started."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from edgecloud.testing.redis_server import RedisServer, find_redis_server
from tests.gateway.gwrig import Gateway, endpoint, launch_gateway, launch_standin, stopped_after

KEY = "ec-state-faults"
CHAT = {"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}


def _state_up(gw: Gateway) -> float:
    for line in httpx.get(gw.base + "/metrics", timeout=5).text.splitlines():
        if line.startswith("edgecloud_gateway_state_up "):
            return float(line.split()[-1])
    raise AssertionError("no state_up gauge")


def _wait(cond: object, what: str, timeout_s: float = 15.0) -> float:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout_s, f"{what} within {timeout_s} s"
        time.sleep(0.02)
    return time.monotonic() - t0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, since it is killed."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; CI installs it)")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_redis_killed_under_load_no_5xx_no_stuck_request_and_recovery(
        tmp_path: Path, own_redis: RedisServer) -> None:
    with stopped_after() as started:
        edge = launch_standin(tmp_path, started, "edge", "edge-model")
        cloud = launch_standin(tmp_path, started, "cloud", "cloud-model")
        config = {
            "endpoints": [
                endpoint("edge", "edge", edge.v1, price={"input_per_mtok": 5.0,
                                                          "output_per_mtok": 5.0}),
                endpoint("cloud", "cloud", cloud.v1, price={"input_per_mtok": 1.0,
                                                             "output_per_mtok": 2.0}),
            ],
            "auth": {"keys": [{"name": "team-a", "sha256": hashlib.sha256(KEY.encode())
                               .hexdigest(), "limits": {"rpm": 100000, "max_parallel": 64,
                                                        "monthly_cloud_usd": 100}}]},
            "policy": {"budget": {"monthly_cloud_usd": 100, "hard": True}},
            "state": {"backend": "redis", "timeout_s": 0.2},
            "limits": {"health_interval_s": 0.5},
        }
        gw = launch_gateway(tmp_path, started, config,
                            env={"EDGECLOUD_REDIS_URL": own_redis.url})
        statuses: list[int] = []
        placements: list[str] = []
        phase = {"killed": False}
        placements_while_down: list[str] = []

        def one(_: int) -> None:
            with httpx.Client(timeout=10) as client:  # a stuck request fails the test here
                r = client.post(gw.v1 + "/chat/completions", json=CHAT,
                                headers={"authorization": f"Bearer {KEY}"})
            statuses.append(r.status_code)
            placements.append(r.headers.get("x-edgecloud-placement", "none"))
            if phase["killed"] and r.headers.get("x-edgecloud-reason") == "budget.unavailable":
                placements_while_down.append(r.headers["x-edgecloud-placement"])

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(40)))  # warm, Redis up
            assert set(placements) == {"cloud"}
            own_redis.kill()
            phase["killed"] = True
            list(pool.map(one, range(80)))  # Redis down
            _wait(lambda: _state_up(gw) == 0.0, "the gateway notices Redis is down")
            own_redis.start()
            back_after = _wait(lambda: _state_up(gw) == 1.0, "the gateway uses Redis again")
            phase["killed"] = False
            placements.clear()
            list(pool.map(one, range(40)))
        print(f"state back {back_after:.3f} s after redis-server answered")
        assert all(s < 500 for s in statuses), sorted(set(statuses))
        assert statuses.count(200) == len(statuses)
        # While down, the capped budget kept everything on the edge; after, the cloud is back.
        assert placements_while_down and set(placements_while_down) == {"edge"}
        assert set(placements) == {"cloud"}


def test_edge_that_becomes_ready_after_the_gateway_is_used_at_once(tmp_path: Path) -> None:
    """Issue item 7: private requests every 50 ms while the node starts; after its /readyz
    answers 200, the gateway re-probes on the first refusal instead of waiting for the breaker
    and the 2 s interval."""
    with stopped_after() as started:
        cloud = launch_standin(tmp_path, started, "cloud", "cloud-model")
        port = free_port()
        node_base = f"http://127.0.0.1:{port}"
        config = {"endpoints": [endpoint("edge", "edge", node_base + "/v1"),
                                endpoint("cloud", "cloud", cloud.v1)],
                  "limits": {"health_interval_s": 2.0}}
        gw = launch_gateway(tmp_path, started, config)
        node = ManagedProcess(edgecloud_command("serve", "--port", str(port), "--preload",
                                                "--parallel", "2", "--ctx", "1024"),
                              f"{node_base}/readyz", log_path=str(tmp_path / "node.log"),
                              name="node")
        started.append(node)
        private = {"model": "auto", "max_tokens": 2,
                   "messages": [{"role": "user", "content": "mail me at ana@example.org"}]}
        node.start()
        ready_at: float | None = None
        refused_after_ready = 0
        deadline = time.monotonic() + 240
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                if ready_at is None:
                    try:
                        if client.get(node_base + "/readyz", timeout=1).status_code == 200:
                            ready_at = time.monotonic()
                    except httpx.HTTPError:
                        pass
                r = client.post(gw.v1 + "/chat/completions", json=private)
                if r.status_code == 200:
                    assert r.headers["x-edgecloud-placement"] == "edge"
                    if ready_at is not None:
                        break
                else:
                    assert r.status_code == 503
                    assert r.json()["error"]["code"] == "no_allowed_endpoint"
                    if ready_at is not None:
                        refused_after_ready += 1
                time.sleep(0.05)
        assert ready_at is not None, "the node never became ready"
        late = time.monotonic() - ready_at
        print(f"refused after ready: {refused_after_ready}; first edge answer {late:.3f} s "
              "after /readyz said 200")
        assert cloud.received() == []  # nothing private left the edge
        # Before the re-probe this was dozens (the breaker's 5 s and the 2 s interval).
        assert refused_after_ready <= 3
