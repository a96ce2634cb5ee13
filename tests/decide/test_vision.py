"""`edgecloud decide` sizes an edge for screenshots from a phone-agent bench file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgecloud.bench.results import ImageSet
from edgecloud.decide.analysis import decide
from edgecloud.decide.decision import evaluate_options
from edgecloud.decide.gateway_config import gateway_config
from edgecloud.decide.loading import load_bench, load_inputs
from edgecloud.decide.measurements import from_bench
from tests.decide.decide_samples import bench, inputs, level, perf, prices, workload
from tests.decide.test_cli import _run as run_decide

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "decide"
SAMPLE = EXAMPLES / "bench-edge-phone-agent.json"
PHONE = EXAMPLES / "workload-phone-agent.yaml"


def test_sample_bench_gives_image_cost_and_boxes() -> None:
    d = decide(load_inputs(PHONE, None, [f"edge={SAMPLE}"]))
    edge = d.inputs.edge
    assert edge.images is not None
    assert edge.images.image_ms == 1800.0 and edge.images.first_token_ms == 2000.0
    # Level 2 is the last within the SLO (level 4's TTFT is 7 s): capacity by Little's law,
    # 2 requests in flight / (TTFT 3500 + TPOT 25 x 15 output tokens) ms.
    assert edge.operating_level == 2
    assert edge.capacity_rps == pytest.approx(2 / 3.875)
    v = d.vision
    assert v is not None
    assert v.image_ms_per_request == 1800.0
    assert v.screenshot_peak_rps == pytest.approx(100_000 / 86_400 * 2)
    assert v.boxes_needed == math.ceil(100_000 / 86_400 * 2 * 1.2 / (2 / 3.875))  # 6
    # The edge-only plan has at least those boxes (plus spares for availability).
    assert d.options["edge"].cost.years[0].boxes >= v.boxes_needed


def test_capacity_follows_the_workloads_output_length_for_image_requests() -> None:
    b = load_bench(SAMPLE)
    w = workload(
        tokens={"input_per_request": 300, "output_per_request": 64},
        slo={"ttft_ms": 5000, "e2e_ms": 60_000},
        images={"share": 1.0},
    )
    p = from_bench("edge", b, w.tokens, w.slo, "sample")
    # One request in flight: 1000 / (2000 + 20 x 63) ms; longer answers, fewer requests.
    assert p.points[0].capacity_rps == pytest.approx(1000 / (2000 + 20 * 63))


def test_screenshot_share_scales_the_boxes() -> None:
    b = bench(
        levels=[level(1, 16, 2000, 20, out_tokens=16)],
        knee=None,
        images=ImageSet(per_request=1, width=1080, height=2400, mean_bytes=1),
    )
    w = workload(
        requests_per_day=864_000,
        tokens={"input_per_request": 300, "output_per_request": 16},
        slo={"ttft_ms": 5000, "e2e_ms": 8000},
        images={"share": 0.25},
    )
    edge = from_bench("edge", b, w.tokens, w.slo, "b.json")
    d = decide(inputs(w=w, edge=edge))
    assert d.vision is not None and d.vision.image_ms is None  # the server reported none
    assert d.vision.screenshot_peak_rps == pytest.approx(10 * 2 * 0.25)
    cap = 1000 / (2000 + 20 * 15)
    assert d.vision.boxes_needed == math.ceil(5.0 / cap)


def test_an_edge_that_reads_no_images_cannot_take_a_screenshot_workload() -> None:
    w = workload(images={"share": 0.5})
    opts = evaluate_options(inputs(w=w, edge=perf()))
    assert not opts["edge"].check("capability").passed
    assert "images" in opts["edge"].check("capability").detail
    assert opts["hybrid"].check("capability").passed
    # Said in the prices: the edge reads images.
    opts = evaluate_options(inputs(w=w, p=prices(edge__capabilities=["text", "vision"])))
    assert opts["edge"].check("capability").passed
    assert decide(inputs(w=w)).vision is None  # no screenshot bench: nothing to size from


def test_emitted_gateway_config_marks_a_benched_vision_edge() -> None:
    d = decide(load_inputs(PHONE, None, [f"edge={SAMPLE}"]))
    option = d.recommended or "edge"
    cfg = gateway_config(d.inputs, option, d.options[option].cost.years[0])
    edges = [e for e in cfg.endpoints if e.tier == "edge"]
    assert edges and all("vision" in e.capabilities for e in edges)


def test_cli_shows_the_screenshot_sizing(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    proc = run_decide("--workload", str(PHONE), "--bench", f"edge={SAMPLE}", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "screenshots on the edge" in proc.stdout
    assert "boxes for the screenshots: 6" in proc.stdout
    assert json.loads(out.read_text())["vision"]["boxes_needed"] == 6
