"""The bench's HTML reports (one run, and compare) render in headless Chromium."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from edgecloud.bench.results import BenchResults
from edgecloud.html_report.screenshot import find_chromium, screenshot_html
from tests.bench.benchcli import run_bench_cli

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bench_cli(*args, timeout=180)


def test_run_and_compare_reports_render(standin: Callable[..., str], tmp_path: Path) -> None:
    edge = standin("--ttft-ms", "30,60,90", "--tokens", "6", "--itl-ms", "5")
    cloud = standin("--capacity", "2", "--service-ms", "40", "--tokens", "6", "--itl-ms", "2")
    for name, url in (("edge", edge), ("cloud", cloud)):
        done = _cli(
            url,
            "--concurrency",
            "1,2,4",
            "--requests",
            "12",
            "--label",
            name,
            "--out",
            str(tmp_path / f"{name}.json"),
            "--report",
            str(tmp_path / f"{name}.html"),
            "--slo-ttft-ms",
            "80",
            "-q",
        )
        assert done.returncode == 0, done.stderr
    runs = [
        BenchResults.model_validate_json((tmp_path / f"{n}.json").read_text())
        for n in ("edge", "cloud")
    ]
    assert all(r.complete and len(r.levels) == 3 and r.knee for r in runs)
    assert runs[0].energy is not None and runs[0].energy.source in ("estimate", "rapl", "nvml")
    done = _cli(
        "compare",
        str(tmp_path / "edge.json"),
        str(tmp_path / "cloud.json"),
        "--report",
        str(tmp_path / "cmp.html"),
    )
    assert done.returncode == 0, done.stderr
    assert "edge" in done.stdout and "cloud" in done.stdout
    page = (tmp_path / "edge.html").read_text()
    assert page.count("<svg") == 4 and "Knee" in page and "<script" not in page
    assert (tmp_path / "cmp.html").read_text().count("<svg") == 3

    if find_chromium() is None:
        pytest.skip(
            "chromium is not installed (apt-get install -y chromium): the render check needs it"
        )
    from matplotlib.image import imread

    for name in ("edge", "cmp"):
        png = screenshot_html(
            tmp_path / f"{name}.html", tmp_path / f"{name}.png", width=1200, height=2000
        )
        pixels = imread(str(png))
        assert pixels.shape[:2] == (2000, 1200)
        assert pixels[20, 600, :3].mean() < 0.4  # the dark header band drew
        # Plot lines drew: plenty of the blue (first series) pixels of matplotlib's palette.
        blue = (pixels[..., 2] > 0.55) & (pixels[..., 0] < 0.3) & (pixels[..., 1] < 0.6)
        assert blue.sum() > 300, name
