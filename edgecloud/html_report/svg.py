"""Matplotlib figures to inline SVG text, safe to put several in one HTML page."""

from __future__ import annotations

import io
import itertools
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_counter = itertools.count(1)
_ID = re.compile(r'\bid="([^"]+)"')
_XML_HEAD = re.compile(r"^\s*<\?xml[^>]*\?>\s*(<!DOCTYPE[^>]*>\s*)?", re.S)


def new_figure(width_in: float = 7.0, height_in: float = 3.6) -> tuple[Figure, Axes]:
    """A figure with one axes, made without pyplot (no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    return fig, ax


def figure_svg(fig: Any, *, title: str | None = None) -> str:
    """Render `fig` as an `<svg>` element string, with ids made unique in the page.

    Text stays text (not glyph paths), so the SVG is small and searchable. `title` becomes the
    SVG's accessible `<title>`.
    """
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "edgecloud"}):
        fig.savefig(
            buf,
            format="svg",
            bbox_inches="tight",
            metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
        )
    svg = _XML_HEAD.sub("", buf.getvalue(), count=1)
    svg = _prefix_ids(svg, f"f{next(_counter)}-")
    if title:
        from html import escape

        svg = svg.replace(">", f"><title>{escape(title)}</title>", 1)
    # Let the page's CSS size it; keep the aspect ratio from the viewBox.
    svg = re.sub(r'(<svg[^>]*?)\s(width|height)="[^"]*"', r"\1", svg, count=1)
    svg = re.sub(r'(<svg[^>]*?)\s(width|height)="[^"]*"', r"\1", svg, count=1)
    return svg


def _prefix_ids(svg: str, prefix: str) -> str:
    """matplotlib's clip-path ids can repeat across figures; give each figure its own space."""
    ids = set(_ID.findall(svg))
    if not ids:
        return svg

    def ref(match: re.Match[str]) -> str:
        name = match.group(2)
        return f"{match.group(1)}{prefix}{name}" if name in ids else match.group(0)

    svg = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r"(url\(#)([^)]+)(?=\))", ref, svg)
    svg = re.sub(r'((?:xlink:)?href="#)([^"]+)(?=")', ref, svg)
    return svg
