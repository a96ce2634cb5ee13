"""`edgecloud bench --workload phone-agent`: screenshot requests end to end, and the image time
the server reports (the stand-in publishes the vision node's image counters, or none)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from edgecloud.bench.results import BenchResults
from edgecloud.bench.server_metrics import image_ms_per_image, metrics_url, parse_image_counters
from edgecloud.bench.workloads import PHONE_AGENT_MAX_TOKENS, encode_bodies, load_workload
from edgecloud.testing.standin_openai import IMAGE_TOKENS, TEXT_TOKENS
from tests.bench.benchcli import run_bench_cli
from tests.conftest import start_node


def test_phone_agent_requests_carry_a_phone_screenshot() -> None:
    wl = load_workload("phone-agent", size=4)
    assert wl.images is not None and wl.default_max_tokens == PHONE_AGENT_MAX_TOKENS
    assert (wl.images.width, wl.images.height, wl.images.per_request) == (1080, 2400, 1.0)
    body = orjson.loads(encode_bodies(wl, model="m", max_tokens=16, stream=True)[0])
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    (part,) = [p for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    png = base64.b64decode(url.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1080, 2400)
    assert 1_000_000 <= len(png) <= 3_000_000
    assert wl.images.mean_bytes > 1_000_000


def test_image_counters_from_prometheus_text() -> None:
    page = (
        "# HELP edgecloud_node_images_total Images read.\n"
        "# TYPE edgecloud_node_images_total counter\n"
        "edgecloud_node_images_total 10.0\n"
        "edgecloud_node_images_created 1.7e9\n"
        "edgecloud_node_image_seconds_total 2.5\n"
    )
    assert parse_image_counters(page) == (10.0, 2.5)
    assert parse_image_counters("edgecloud_node_images_total 3.0\n") is None
    assert parse_image_counters("edgecloud_node_images_total x\n"
                                "edgecloud_node_image_seconds_total 1\n") is None
    assert image_ms_per_image((10.0, 2.5), (14.0, 3.5)) == (4, 250.0)
    assert image_ms_per_image((10.0, 2.5), (10.0, 2.5)) == (0, None)
    assert image_ms_per_image(None, (1.0, 1.0)) == (0, None)
    assert metrics_url("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/metrics"


def _bench(base: str, out: Path, *more: str) -> BenchResults:
    proc = run_bench_cli(
        base, "--workload", "phone-agent", "--concurrency", "1,2", "--requests", "4",
        "--out", str(out), "--quiet", *more,
    )
    assert proc.returncode == 0, proc.stderr
    return BenchResults.model_validate_json(out.read_text())


@pytest.mark.slow
def test_phone_agent_bench_reports_server_image_time(
    standin: Callable[..., str], tmp_path: Path
) -> None:
    base = standin("--tokens", "16", "--image-ms", "40")
    res = _bench(base, tmp_path / "shots.json")
    assert res.complete and res.workload == "phone-agent"
    assert res.images is not None and res.images.image_time_source == "server_metrics"
    assert [lv.level for lv in res.levels] == [1.0, 2.0]
    for lv in res.levels:
        assert lv.ok == lv.requests == 4
        assert lv.server_images == 4  # the warm-up ran before the first reading
        assert lv.image_ms == pytest.approx(40.0)  # what the server reported, per image
    ok = [r for r in res.records if r.ok]
    # Short outputs (16 tokens by default), and the image tokens counted in the prompt.
    assert all(r.output_tokens == 16 for r in ok)
    assert all(r.prompt_tokens == TEXT_TOKENS + IMAGE_TOKENS for r in ok)


@pytest.mark.slow
def test_phone_agent_bench_reads_image_time_from_the_answers_timings(
    standin: Callable[..., str], tmp_path: Path
) -> None:
    """No counters to read (a vision node behind a gateway): each answer's `timings` say it."""
    base = standin("--tokens", "16", "--image-ms", "30", "--answer-timings")
    for stream in ("", "--no-stream"):
        extra = (stream,) if stream else ()
        res = _bench(base, tmp_path / f"shots{stream}.json", "--concurrency", "1", *extra)
        assert res.complete, res.note
        assert res.images is not None and res.images.image_time_source == "server_timings"
        (lv,) = res.levels
        assert lv.server_images == lv.ok == 4
        assert lv.image_ms == pytest.approx(30.0)
        assert all(r.server_images == 1 and r.server_image_ms == pytest.approx(30.0)
                   for r in res.records if r.ok)


@pytest.mark.slow
def test_phone_agent_bench_says_when_the_server_reports_no_image_time(
    standin: Callable[..., str], tmp_path: Path
) -> None:
    base = standin("--tokens", "16")  # no /metrics
    res = _bench(base, tmp_path / "shots.json", "--concurrency", "1", "--max-tokens", "4")
    assert res.complete
    assert res.images is not None and res.images.image_time_source == "none"
    assert all(lv.image_ms is None and lv.server_images == 0 for lv in res.levels)
    assert all(r.output_tokens == 4 for r in res.records if r.ok)


@pytest.mark.slow
def test_phone_agent_bench_against_the_real_vision_node(
    tmp_path: Path, tiny_mmproj_path: str
) -> None:
    """The real node with the generated projector: screenshots read end to end, and the image
    time taken from the node's own counters."""
    proc, base = start_node(
        tmp_path, "--mmproj", tiny_mmproj_path, "--parallel", "2", "--ctx", "1024", "--preload",
        name="vision-node",
    )
    try:
        proc.wait_ready(timeout_s=180)
        res = _bench(base, tmp_path / "node.json", "--concurrency", "1", "--requests", "2")
    finally:
        proc.stop()
    assert res.complete, res.note
    assert res.images is not None and res.images.image_time_source == "server_metrics"
    (lv,) = res.levels
    assert lv.ok == 2 and lv.server_images == 2
    assert lv.image_ms is not None and lv.image_ms > 0
    ok = [r for r in res.records if r.ok]
    # Each answer says its own image time too (the node's `timings`).
    assert all(r.server_images == 1 and (r.server_image_ms or 0) > 0 for r in ok)
    # The tiny projector turns an image into 64 tokens, counted in the prompt.
    assert all(r.prompt_tokens > 64 and 0 < r.output_tokens <= 16 for r in ok)
