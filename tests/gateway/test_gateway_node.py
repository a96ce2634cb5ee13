"""The gateway in front of the real node (edge, embedded model) and a stand-in cloud provider."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.supervise import ManagedProcess
from tests.gateway.gwrig import endpoint, fast_limits, launch_gateway, launch_standin

pytestmark = pytest.mark.slow


def _config(node_base: str, cloud_v1: str) -> dict[str, Any]:
    return {
        "endpoints": [
            endpoint("edge-node", "edge", node_base + "/v1", max_concurrency=4),
            endpoint("cloud", "cloud", cloud_v1,
                     price={"input_per_mtok": 0.5, "output_per_mtok": 1.5}),
        ],
        "limits": fast_limits(),
    }


def test_openai_sdk_through_the_gateway(node: str, tmp_path: Path) -> None:
    from openai import OpenAI

    started: list[ManagedProcess] = []
    try:
        cloud = launch_standin(tmp_path, started, "cloud")
        gw = launch_gateway(tmp_path, started, _config(node, cloud.v1))
        client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", max_tokens=8,
            messages=[{"role": "user", "content": "Say hello."}])
        assert raw.headers["x-edgecloud-placement"] == "edge"
        answer = raw.parse()
        assert answer.choices[0].message.content is not None and answer.usage is not None
        assert answer.usage.completion_tokens >= 1

        stream = client.chat.completions.create(
            model="gpt-4o-mini", max_completion_tokens=8, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "我的手机号是13812345678，记住它。"}])
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and chunks[-1].usage is not None
        completion = client.completions.create(model="auto", prompt="Once upon a time",
                                               max_tokens=8)
        assert completion.choices[0].text
        assert cloud.received() == []  # everything ran on the edge node
    finally:
        for p in reversed(started):
            p.stop()


def test_kill_the_edge_node_mid_run(tmp_path: Path) -> None:
    from tests.gateway.gwrig import start_node

    started: list[ManagedProcess] = []
    node_proc, node_base = start_node(tmp_path, "--preload", "--parallel", "2", "--ctx", "1024",
                                      name="edge-node")
    started.append(node_proc)
    try:
        node_proc.wait_ready(timeout_s=180)
        cloud = launch_standin(tmp_path, started, "cloud")
        gw = launch_gateway(tmp_path, started, _config(node_base, cloud.v1))
        outcomes: list[tuple[bool, int, str, str]] = []
        with httpx.Client(base_url=gw.base, timeout=60) as c:
            for i in range(40):  # bounded: 40 requests, the node dies after the 10th
                if i == 10:
                    node_proc.kill()
                private = i % 2 == 1
                text = f"请给 user{i}@example.com 回信" if private else f"Count to three ({i})."
                r = c.post("/v1/chat/completions", json={
                    "model": "auto", "max_tokens": 4, "user": f"req-{i}",
                    "messages": [{"role": "user", "content": text}]})
                outcomes.append((private, r.status_code, r.headers.get("x-edgecloud-placement",
                                 ""), r.headers.get("x-edgecloud-reason", "")))
        before, after = outcomes[:10], outcomes[10:]
        assert all(status == 200 and where == "edge" for _, status, where, _ in before)
        for private, status, where, reason in after:
            if private:
                assert status == 503 and reason == "privacy.pii.email"
            else:
                assert status == 200 and where == "cloud"
        users = {r["user"] for r in cloud.received()}
        assert users and all(int(u.split("-")[1]) % 2 == 0 for u in users)  # no private one
        assert not any("example.com" in t for r in cloud.received() for t in r["texts"])
    finally:
        for p in reversed(started):
            p.stop()


def test_cloud_down_runs_on_the_edge(node: str, tmp_path: Path) -> None:
    started: list[ManagedProcess] = []
    try:
        cloud = launch_standin(tmp_path, started, "cloud")
        gw = launch_gateway(tmp_path, started, _config(node, cloud.v1))
        cloud.proc.kill()
        with httpx.Client(base_url=gw.base, timeout=60) as c:
            r = c.post("/v1/chat/completions", headers={"x-edgecloud-placement": "cloud"},
                       json={"model": "auto", "max_tokens": 4,
                             "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.headers["x-edgecloud-placement"] == "edge"
        assert r.headers["x-edgecloud-reason"] in ("fallback", "only")
    finally:
        for p in reversed(started):
            p.stop()


def _node_gauge(node_base: str, name: str) -> float:
    for line in httpx.get(node_base + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"the node exports no {name}")


def test_client_that_leaves_frees_the_node_slot(node: str, tmp_path: Path) -> None:
    import socket
    import time

    started: list[ManagedProcess] = []
    try:
        cloud = launch_standin(tmp_path, started, "cloud")
        gw = launch_gateway(tmp_path, started, _config(node, cloud.v1))
        raw = json.dumps({"model": "auto", "max_tokens": 1500, "temperature": 1.5,
                          "messages": [{"role": "user", "content":
                                        "Write a very long story about the sea, my number "
                                        "is 13812345678."}]}).encode()
        host, port = gw.base.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                     b"application/json\r\ncontent-length: %d\r\n\r\n" % len(raw) + raw)
        cancelled = _node_gauge(node, "edgecloud_node_cancelled_requests_total")
        deadline = time.monotonic() + 60
        while _node_gauge(node, "edgecloud_node_active_slots") < 1:  # generating, not streamed
            assert time.monotonic() < deadline, "the node never started generating"
            time.sleep(0.02)
        sock.close()
        # The gateway hangs up on the node at once, and the node cancels the generation (1,500
        # tokens would take it many seconds more).
        deadline = time.monotonic() + 5
        while _node_gauge(node, "edgecloud_node_cancelled_requests_total") <= cancelled:
            assert time.monotonic() < deadline, "the node kept generating for a gone client"
            time.sleep(0.02)
        deadline = time.monotonic() + 60
        while _node_gauge(node, "edgecloud_node_active_slots") > 0:  # its next step frees it
            assert time.monotonic() < deadline, "the cancelled request kept its slot"
            time.sleep(0.05)
        assert '"error":"client_gone"' in gw.wait_log('"error":"client_gone"')
        assert cloud.received() == []  # private (a phone number): never sent to the cloud
    finally:
        for p in reversed(started):
            p.stop()


def test_private_requests_reach_an_edge_that_came_up_before_its_probe(tmp_path: Path) -> None:
    import time

    from edgecloud.supervise import edgecloud_command, free_port

    started: list[ManagedProcess] = []
    try:
        cloud = launch_standin(tmp_path, started, "cloud")
        port = free_port()
        node_base = f"http://127.0.0.1:{port}"
        config = _config(node_base, cloud.v1)
        config["limits"] = {"health_interval_s": 3600}  # the first probe finds the edge down
        gw = launch_gateway(tmp_path, started, config)
        assert httpx.get(gw.base + "/readyz", timeout=5).json()["available"] == ["cloud"]
        private = {"x-edgecloud-sensitivity": "private"}
        body = {"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=gw.base, timeout=60) as c:
            # Nothing listens yet: tried anyway (refused at once), and it fails closed.
            r = c.post("/v1/chat/completions", json=body, headers=private)
            assert r.status_code == 503 and r.headers["x-edgecloud-reason"] == "privacy.header"
            assert "ConnectionRefusedError" in r.json()["error"]["message"]
            node_proc = ManagedProcess(
                edgecloud_command("serve", "--port", str(port), "--preload", "--parallel", "2",
                                  "--ctx", "1024"),
                f"{node_base}/readyz", log_path=str(tmp_path / "edge-node.log"), name="edge-node")
            started.append(node_proc)
            node_proc.start()
            node_proc.wait_ready(timeout_s=180)
            r = c.post("/v1/chat/completions", json=body, headers=private)
            assert r.status_code == 200 and r.headers["x-edgecloud-placement"] == "edge"
            # The success marked the edge healthy at once, an hour before its next probe.
            assert "edge-node" in c.get("/readyz").json()["available"]
            r = c.post("/v1/chat/completions", json=body, headers=private)
            assert r.status_code == 200 and r.headers["x-edgecloud-placement"] == "edge"
        assert cloud.received() == []
        deadline = time.monotonic() + 10
        while True:  # the log is flushed every 0.2 s
            records = [json.loads(line) for line in gw.log_lines()
                       if '"event":"request"' in line]
            if len(records) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [rec.get("panic", False) for rec in records] == [True, True, False]
    finally:
        for p in reversed(started):
            p.stop()
