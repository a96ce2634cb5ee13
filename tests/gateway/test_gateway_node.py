"""The gateway in front of the real node (edge, embedded model) and a stand-in cloud provider."""

from __future__ import annotations

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
