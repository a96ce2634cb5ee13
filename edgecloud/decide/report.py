"""The decision report: one self-contained HTML page (inline SVG charts, no external files).

`render_report` builds the sections; `_page` is the only page-assembly code, kept small so it
can move onto the shared report module.
"""

from __future__ import annotations

from html import escape

from edgecloud.decide import charts
from edgecloud.decide.analysis import Decision
from edgecloud.decide.decision import LABEL

_CSS = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}.pass{color:#2a7d2a}
.fail{color:#b02a2a}.choice{background:#eef7f2;padding:1em;border-left:4px solid #2a9d8f}
svg{max-width:100%;height:auto}small{color:#666}
"""


def _page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<section><h2>{escape(h)}</h2>\n{html}</section>" for h, html in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def _k(x: float) -> str:
    return f"{x / 1e3:,.1f}k"


def _summary(d: Decision) -> str:
    if d.recommended is None:
        head = '<p class="choice"><b>No option meets the compliance rules.</b></p>'
    else:
        note = "" if d.meets_all_checks else " (it still fails a check: see below)"
        head = f'<p class="choice">Recommended: <b>{LABEL[d.recommended]}</b>{note}</p>'
    items = "".join(f"<li>{escape(r.text)}</li>" for r in d.reasons)
    flips = "".join(
        f"<li>below {f.requests_per_day:,.0f} requests/day the answer becomes "
        f"{escape(LABEL.get(f.to or '', 'none'))}</li>"
        if f.direction == "below"
        else f"<li>above {f.requests_per_day:,.0f} requests/day the answer becomes "
        f"{escape(LABEL.get(f.to or '', 'none'))}</li>"
        for f in d.flips
    )
    flips = flips or "<li>the answer holds from 1/1000 to 1000x today's volume</li>"
    return (
        f"{head}<h3>Why (most decisive first)</h3><ol>{items}</ol>"
        f"<h3>Where it flips</h3><ul>{flips}</ul>"
    )


def _options_table(d: Decision) -> str:
    cur = escape(d.inputs.prices.currency)
    rows = []
    for option, r in d.options.items():
        c = r.cost
        first = c.years[0]
        checks = "<br>".join(
            f'<span class="{"pass" if ch.passed else "fail"}">{ch.name}: '
            f"{'ok' if ch.passed else 'FAILS'}</span> <small>{escape(ch.detail)}</small>"
            for ch in r.checks
        )
        rows.append(
            f"<tr><td>{LABEL[option]}</td><td>{_k(c.tco)}</td><td>{_k(c.capex)}</td>"
            f"<td>{_k(c.opex)}</td><td>{_k(first.opex / min(12, c.months))}</td>"
            f"<td>{' / '.join(str(y.boxes) for y in c.years)}</td>"
            f'<td>{first.edge_share * 100:.0f}%</td><td style="text-align:left">{checks}</td></tr>'
        )
    head = (
        f"<tr><th>option</th><th>TCO ({cur})</th><th>capex</th><th>opex</th>"
        "<th>opex / month, year 1</th><th>edge boxes by year</th><th>at edge</th>"
        "<th>checks</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _breakdown(d: Decision) -> str:
    cats = sorted({k for r in d.options.values() for k in r.cost.by_category})
    head = "<tr><th>cost</th>" + "".join(f"<th>{LABEL[o]}</th>" for o in d.options) + "</tr>"
    rows = "".join(
        f"<tr><td>{escape(cat)}</td>"
        + "".join(f"<td>{_k(r.cost.by_category.get(cat, 0.0))}</td>" for r in d.options.values())
        + "</tr>"
        for cat in cats
    )
    return f"<table>{head}{rows}</table>"


def _tiers(d: Decision) -> str:
    slo = d.inputs.workload.slo
    rows = "".join(
        f"<tr><td>{t.tier}</td><td>{escape(t.source)}</td>"
        f"<td>{'unlimited' if t.capacity_rps is None else f'{t.capacity_rps:.3g}'}</td>"
        f"<td>{t.ttft_ms or 0:.0f}</td><td>{t.e2e_ms or 0:.0f}</td>"
        f'<td class="{"pass" if t.meets_slo else "fail"}">{"yes" if t.meets_slo else "no"}</td>'
        "</tr>"
        for t in (d.inputs.edge, d.inputs.cloud)
    )
    head = (
        f"<tr><th>tier</th><th>source</th><th>requests/s per unit at the SLO</th>"
        f"<th>TTFT {slo.percentile} ms</th><th>e2e {slo.percentile} ms</th>"
        "<th>meets SLO</th></tr>"
    )
    return f"<table>{head}{rows}</table>"


def _workload(d: Decision) -> str:
    w, c = d.inputs.workload, d.inputs.workload.compliance
    rows = [
        ("requests per day", f"{w.requests_per_day:,.0f} (peak x{w.peak_to_average:g})"),
        ("growth per year", f"{w.growth_per_year * 100:g}%"),
        (
            "tokens per request",
            f"{w.tokens.input_per_request:g} in, {w.tokens.output_per_request:g} out",
        ),
        (
            "personal data",
            f"{c.personal_data_share * 100:g}% "
            f"({'strict: stays on the edge' if c.strict else 'may leave the edge'})",
        ),
        (
            "residency",
            "; ".join(
                f"{r.share * 100:g}% {r.region} -> {', '.join(r.allowed)}" for r in c.residency
            )
            or "none",
        ),
        ("users", ", ".join(f"{k} {v * 100:g}%" for k, v in w.users.regions.items())),
        (
            "SLO",
            f"TTFT {w.slo.ttft_ms:g} ms, end-to-end {w.slo.e2e_ms:g} ms at "
            f"{w.slo.percentile}; availability {w.availability_target * 100:g}%",
        ),
        (
            "horizon",
            f"{w.horizon_years} years"
            + (f", the workload runs {w.duration_months} months" if w.duration_months else ""),
        ),
    ]
    body = "".join(
        f'<tr><td>{escape(k)}</td><td style="text-align:left">{escape(v)}</td></tr>'
        for k, v in rows
    )
    return f"<table>{body}</table>"


def render_report(d: Decision) -> str:
    """The whole HTML page for one decision."""
    w = d.inputs.workload
    span = f"{w.months()} months"
    be = d.break_even_requests_per_day
    be_text = (
        f"<p>Break-even: edge-only costs less than cloud-only above "
        f"<b>{be:,.0f}</b> requests/day.</p>"
        if be
        else "<p>No break-even volume in the range searched.</p>"
    )
    sections = [
        ("Decision", _summary(d)),
        ("Workload", _workload(d)),
        (f"Options over {span}", _options_table(d) + _breakdown(d)),
        ("Cost over time", charts.tco_over_time(d)),
        ("Cost per 1,000 requests against volume", be_text + charts.cost_per_1k(d)),
        ("Latency per tier against the SLO", _tiers(d) + charts.latency_vs_slo(d)),
        ("Sensitivity: each input at -50% and +50%", charts.tornado_chart(d)),
        (
            "How it is computed",
            "<p>Every formula is documented in docs/decide.md of the edgecloud project.</p>",
        ),
    ]
    return _page(f"edgecloud decide: {w.name}", sections)
