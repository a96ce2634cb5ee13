"""One self-contained HTML page: a title, sections of HTML/SVG, inline CSS, no scripts."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;
background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;opacity:.85;font-size:13px}
main{max-width:1100px;margin:0 auto;padding:12px 28px 40px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;margin:16px 0;padding:14px 18px}
section h2{font-size:17px;margin:0 0 10px}
.note{color:#56606b;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #e3e7ec;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#eef1f5}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.grid>figure{flex:1 1 460px;margin:0}
figure svg{width:100%;height:auto}
figcaption{font-size:12px;color:#56606b;text-align:center}
.tag{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;background:#e8eef6}
.warn{background:#fff4e0}.bad{background:#fde8e8}.good{background:#e6f5ea}
"""


@dataclass
class Section:
    """A titled block of the page. `body` is trusted HTML (escape user text with `escape`)."""

    title: str
    body: str = ""
    figures: Sequence[str] = field(default_factory=tuple)  # SVG strings from figure_svg
    captions: Sequence[str] = field(default_factory=tuple)
    note: str = ""


def escape(text: object) -> str:
    """HTML-escape any value for use in a `Section.body`."""
    return html.escape(str(text), quote=True)


def table_html(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    row_classes: Sequence[str] | None = None,
) -> str:
    """A plain HTML table; cells are escaped, `None` shows as an en dash, numbers as `human_number`.

    With no non-empty header the table has no header row (a key/value table).
    """
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{escape(row_classes[i])}"' if row_classes and row_classes[i] else ""
        cells = "".join(f"<td>{escape(_cell(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def _cell(value: object) -> str:
    return "\u2013" if value is None else human_number(value)


def human_number(value: object) -> str:
    """A number as people read it: 10,000 (never 1e+04), 12.35, 0.0012; other values as str().

    Whole numbers from 10,000 up get thousands separators (years and ports stay plain).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == 0 or abs(value) >= 1e-4:
        return f"{value:.4g}"  # no exponent in this range
    return f"{value:.2e}"


def render_page(
    title: str, sections: Sequence[Section], *, subtitle: str = "", generated_by: str = "edgecloud"
) -> str:
    """The whole HTML document as one string: no external assets, no scripts."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sub = escape(subtitle) + (" · " if subtitle else "") + f"{escape(generated_by)}, {stamp}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{escape(title)}</h1><p>{sub}</p></header><main>",
    ]
    for section in sections:
        parts.append(_section_html(section))
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def _section_html(section: Section) -> str:
    out = [f"<section><h2>{escape(section.title)}</h2>"]
    if section.note:
        out.append(f'<p class="note">{escape(section.note)}</p>')
    if section.body:
        out.append(section.body)
    if section.figures:
        out.append('<div class="grid">')
        for i, svg in enumerate(section.figures):
            cap = section.captions[i] if i < len(section.captions) else ""
            caption = f"<figcaption>{escape(cap)}</figcaption>" if cap else ""
            out.append(f"<figure>{svg}{caption}</figure>")
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)
