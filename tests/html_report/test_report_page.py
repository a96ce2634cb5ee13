"""The shared HTML report: self-contained, unique SVG ids, renders in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgecloud.html_report import Section, figure_svg, new_figure, render_page, table_html
from edgecloud.html_report.screenshot import find_chromium, screenshot_html


def _page() -> str:
    figs = []
    for k in (1, 2):
        fig, ax = new_figure()
        ax.plot([1, 2, 3, 4], [v * k for v in (1, 4, 9, 16)], marker="o", color="#c0392b")
        ax.set_title(f"figure {k}")
        figs.append(figure_svg(fig, title=f"plot {k}"))
    table = table_html(["level", "p95 ms", "note"], [[1, 12.5, "<b>x</b>"], [2, None, "ok"]])
    return render_page(
        "Report <test>", [Section("Plots", table, figures=figs, captions=["a", "b"], note="n")]
    )


def test_page_is_self_contained_with_unique_ids() -> None:
    page = _page()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    # No network assets: the only URLs are XML namespaces, which are never fetched.
    urls = set(re.findall(r"https?://[^\s\"')<]+", page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    assert not re.search(r"\bsrc=|@import|url\((?!#)", page)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert ids and len(ids) == len(set(ids))
    for ref in re.findall(r"url\(#([^)]+)\)", page):
        assert ref in ids
    assert page.count("<svg") == 2
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "Report &lt;test&gt;" in page


@pytest.mark.slow
def test_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    html = tmp_path / "report.html"
    html.write_text(_page(), encoding="utf-8")
    png = screenshot_html(html, tmp_path / "shot.png", width=1000, height=1200)
    from matplotlib.image import imread

    pixels = imread(str(png))
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 900
    # The page drew: the dark header band and the red plot lines are both there.
    header = pixels[20, 500, :3]
    assert header.mean() < 0.4
    red = (pixels[..., 0] > 0.6) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)
    assert red.sum() > 200


def test_numbers_are_written_for_people() -> None:
    from edgecloud.html_report import human_number

    cases = {10000.0: "10,000", 123456.7: "123,457", 12.3456: "12.35", 0.00123: "0.00123",
             0.0: "0", 42: "42", 2026: "2026", 1_500_000: "1,500,000", True: "True",
             "x": "x", 0.00001234: "1.23e-05"}
    for value, text in cases.items():
        assert human_number(value) == text, value
    assert "1e+04" not in table_html(["capex"], [[10000.0]])
