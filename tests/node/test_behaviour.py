"""Node behaviour that needs its own process: lazy load, queue limits, disconnects, swaps."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgecloud.node.model import file_sha256
from edgecloud.supervise import ManagedProcess
from tests.conftest import start_node

pytestmark = pytest.mark.slow

LONG = {"prompt": "Write a very long story about the sea.", "max_tokens": 3000, "temperature": 0.8}


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    raise AssertionError(f"{name} not exported")


def _wait_for(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met before the deadline")


@pytest.fixture(scope="module")
def single_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A lazy node with one slot and no queue: the second concurrent request must get 429."""
    proc, base = start_node(
        tmp_path_factory.mktemp("single"),
        "--lazy",
        "--parallel",
        "1",
        "--max-queue",
        "0",
        "--ctx",
        "4096",
        name="single",
    )
    try:
        _wait_for(lambda: _healthy(base))
        yield base
    finally:
        proc.stop()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_lazy_node_is_not_ready_until_the_first_request(single_slot: str) -> None:
    r = httpx.get(f"{single_slot}/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False
    first = httpx.post(
        f"{single_slot}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=120
    )
    assert first.status_code == 200
    assert httpx.get(f"{single_slot}/readyz").status_code == 200
    assert _metric(single_slot, "edgecloud_node_model_load_seconds") > 0
    assert _metric(single_slot, "edgecloud_node_warmup_seconds") > 0


def test_queue_full_is_429_with_retry_after_and_disconnect_frees_the_slot(
    single_slot: str,
) -> None:
    httpx.post(f"{single_slot}/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=120)
    out_before = _metric(single_slot, "edgecloud_node_output_tokens_total")
    with httpx.Client(timeout=60) as client:
        with client.stream(
            "POST", f"{single_slot}/v1/completions", json={**LONG, "stream": True}
        ) as s:
            lines = s.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data: {"):
                    got += 1
                if got >= 3:
                    break
            busy = httpx.post(
                f"{single_slot}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30
            )
            assert busy.status_code == 429
            assert busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "rate_limit_error"
        # The stream is closed here, long before its 3000 tokens.
    _wait_for(lambda: _metric(single_slot, "edgecloud_node_active_slots") == 0)
    after = httpx.post(
        f"{single_slot}/v1/completions", json={"prompt": "y", "max_tokens": 2}, timeout=60
    )
    assert after.status_code == 200
    assert _metric(single_slot, "edgecloud_node_cancelled_requests_total") >= 1
    assert _metric(single_slot, "edgecloud_node_output_tokens_total") - out_before < 500


def test_two_concurrent_streams_interleave(node: str) -> None:
    stamps: dict[int, list[float]] = {0: [], 1: []}

    def run(i: int) -> None:
        body = {"prompt": f"Story number {i}:", "max_tokens": 40, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{node}/v1/completions", json=body, timeout=60) as s:
            for line in s.iter_lines():
                if line.startswith("data: {"):
                    stamps[i].append(time.perf_counter())

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a, b = stamps[0], stamps[1]
    assert len(a) >= 20 and len(b) >= 20
    # Each stream received tokens while the other was still running: they progressed together.
    assert sum(1 for t in a if b[0] < t < b[-1]) >= 10
    assert sum(1 for t in b if a[0] < t < a[-1]) >= 10


def _sigterm_mid_stream(proc: ManagedProcess, base: str, body: dict[str, object]) -> list[str]:
    """Stream a completion, SIGTERM the node once the stream is under way (a fixed sleep let
    the signal arrive before the client had connected, under load), and return the lines
    received; the node must exit 0."""
    lines: list[str] = []
    started = threading.Event()

    def stream() -> None:
        req = {**body, "temperature": 0, "stream": True}
        try:
            with httpx.stream("POST", f"{base}/v1/completions", json=req, timeout=60) as s:
                for ln in s.iter_lines():
                    if ln:
                        lines.append(ln)
                        started.set()
        finally:
            started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60)
    proc.kill(signal.SIGTERM)
    t.join(60)
    assert proc.proc is not None and proc.proc.wait(30) == 0
    return lines


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    proc, base = start_node(tmp_path, "--preload", "--parallel", "2", name="sigterm")
    proc.wait_ready(timeout_s=120)
    lines = _sigterm_mid_stream(proc, base, {"prompt": "Once", "max_tokens": 8})
    assert lines[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in lines[-2].replace(" ", "")  # finished, not cut


def test_a_stream_still_running_at_the_drain_deadline_ends_with_an_error_and_done(
    tmp_path: Path,
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("drain_timeout_s: 3\n")
    proc, base = start_node(tmp_path, "--preload", "--parallel", "1", "--config", str(config),
                            name="deadline")
    proc.wait_ready(timeout_s=120)
    lines = _sigterm_mid_stream(
        proc, base, {"prompt": "Count from 1 to 1000: 1, 2, 3, 4,", "max_tokens": 3000}
    )
    # Ended by the node before uvicorn's deadline: an error event, then [DONE]; not a cut.
    assert lines[-1] == "data: [DONE]"
    assert '"code":"cancelled"' in lines[-2].replace(" ", ""), lines[-2:]
    assert "graceful shutdown exceeded" not in Path(proc.log_path or "").read_text()


def test_admin_hot_swap(tmp_path: Path, embedded_model_path: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    copy = models / "model-v2.gguf"
    shutil.copyfile(embedded_model_path, copy)
    bad = models / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    outside = tmp_path / "outside.gguf"
    shutil.copyfile(embedded_model_path, outside)
    (models / "link.gguf").symlink_to(outside)
    env = {"EDGECLOUD_ADMIN_TOKEN": "s3cret-token"}
    proc, base = start_node(
        tmp_path,
        "--preload",
        "--version",
        "1.0.0",
        "--model-dir",
        str(models),
        name="admin",
        env=env,
    )
    auth = {"authorization": "Bearer s3cret-token"}
    with proc:
        proc.wait_ready(timeout_s=120)
        assert httpx.get(f"{base}/admin/model").status_code == 401
        info = httpx.get(f"{base}/admin/model", headers=auth, timeout=30).json()
        assert info["version"] == "1.0.0" and info["sha256"] == file_sha256(embedded_model_path)
        # Only files under --model-dir, after resolving `..` and symlinks.
        for path in (outside, models / ".." / "outside.gguf", models / "link.gguf", "/etc/passwd"):
            r = httpx.post(f"{base}/admin/model", headers=auth, json={"path": str(path)})
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "model_path_not_allowed"
        r = httpx.post(f"{base}/admin/model", headers=auth, json={"path": str(bad)}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_load_failed"
        r = httpx.post(
            f"{base}/admin/model",
            headers=auth,
            json={"path": str(copy), "version": "2.0.0"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        # The identity is the sha256 the node computed; the version is the caller's label.
        assert r.json()["sha256"] == file_sha256(str(copy))
        assert r.json()["version"] == "2.0.0" and r.json()["path"] == os.path.realpath(copy)
        ok = httpx.post(
            f"{base}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=60
        )
        assert ok.status_code == 200
        assert httpx.get(f"{base}/readyz").json()["version"] == "2.0.0"
