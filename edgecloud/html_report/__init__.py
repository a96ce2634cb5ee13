"""The page kit of every HTML report: self-contained pages, inline SVG plots from matplotlib,
no network assets.

The reports themselves live with what they report: `bench/render.py` (bench results),
`decide/decision_report.py` (the decision) and `demo/run_report.py` (a demo run). The API is
small:

    from edgecloud.html_report import Section, figure_svg, new_figure, render_page, table_html

    fig, ax = new_figure()
    ax.plot([1, 2, 3], [2, 4, 8])
    html = render_page("My run", [Section("Latency", figure_svg(fig))])

matplotlib is imported lazily (inside `new_figure`/`figure_svg`), so importing this package
is cheap.
"""

from edgecloud.html_report.page import Section, escape, human_number, render_page, table_html
from edgecloud.html_report.svg import figure_svg, new_figure

__all__ = [
    "Section",
    "escape",
    "figure_svg",
    "human_number",
    "new_figure",
    "render_page",
    "table_html",
]
