"""The decision report: one self-contained HTML page built with the shared edgecloud.html_report."""

from __future__ import annotations

from edgecloud.decide import charts
from edgecloud.decide.analysis import Decision
from edgecloud.decide.decision import LABEL
from edgecloud.decide.sizing import vision_lines
from edgecloud.html_report import Section, escape, render_page, table_html


def _k(x: float) -> str:
    return f"{x / 1e3:,.1f}k"


def _tag(ok: bool, text: str) -> str:
    return f'<span class="tag {"good" if ok else "bad"}">{escape(text)}</span>'


def _summary(d: Decision) -> str:
    if d.recommended is None:
        head = f"<p>{_tag(False, 'No option meets the compliance rules.')}</p>"
    else:
        note = "" if d.meets_all_checks else " (it still fails a check: see below)"
        head = f"<p>Recommended: {_tag(d.meets_all_checks, LABEL[d.recommended])}{note}</p>"
    items = "".join(f"<li>{escape(r.text)}</li>" for r in d.reasons)
    flips = "".join(
        f"<li>{f.direction} {f.requests_per_day:,.0f} requests/day the answer becomes "
        f"{escape(LABEL.get(f.to or '', 'none'))}</li>"
        for f in d.flips
    )
    flips = flips or "<li>the answer holds from 1/1000 to 1000x today's volume</li>"
    be = d.break_even_requests_per_day
    if be:
        flips += f"<li>edge-only costs less than cloud-only above {be:,.0f} requests/day</li>"
    return (
        f"{head}<h3>Why, most decisive first</h3><ol>{items}</ol>"
        f"<h3>Where it flips</h3><ul>{flips}</ul>"
    )


def _options_table(d: Decision) -> str:
    # Built by hand: the checks column holds markup, which table_html would escape.
    cur = escape(d.inputs.prices.currency)
    rows = []
    for option, r in d.options.items():
        c = r.cost
        checks = "<br>".join(
            f"{_tag(ch.passed, ch.name)} <small>{escape(ch.detail)}</small>" for ch in r.checks
        )
        cells = [
            LABEL[option],
            _k(c.tco),
            _k(c.capex),
            _k(c.opex),
            _k(c.years[0].opex / min(12, c.months)),
            " / ".join(str(y.boxes) for y in c.years),
            f"{c.years[0].edge_share * 100:.0f}%",
        ]
        tds = "".join(f"<td>{escape(x)}</td>" for x in cells)
        rows.append(f'<tr>{tds}<td style="text-align:left">{checks}</td></tr>')
    heads = [
        "option",
        f"TCO ({cur})",
        "capex",
        "opex",
        "opex / month, year 1",
        "edge boxes by year",
        "at edge",
        "checks",
    ]
    head = "".join(f"<th>{h}</th>" for h in heads)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _breakdown(d: Decision) -> str:
    cats = sorted({k for r in d.options.values() for k in r.cost.by_category})
    return table_html(
        ["cost", *(LABEL[o] for o in d.options)],
        (
            [cat, *(_k(r.cost.by_category.get(cat, 0.0)) for r in d.options.values())]
            for cat in cats
        ),
    )


def _tiers(d: Decision) -> str:
    slo = d.inputs.workload.slo
    return table_html(
        [
            "tier",
            "source",
            "requests/s per unit within the SLO",
            f"TTFT {slo.percentile} ms",
            f"e2e {slo.percentile} ms",
            "meets the SLO",
        ],
        (
            [
                t.tier,
                t.source,
                "unlimited" if t.capacity_rps is None else f"{t.capacity_rps:.3g}",
                t.ttft_ms,
                t.e2e_ms,
                "yes" if t.meets_slo else "no",
            ]
            for t in (d.inputs.edge, d.inputs.cloud)
        ),
        row_classes=["" if t.meets_slo else "bad" for t in (d.inputs.edge, d.inputs.cloud)],
    )


def _workload(d: Decision) -> str:
    w, c = d.inputs.workload, d.inputs.workload.compliance
    residency = "; ".join(
        f"{r.share * 100:g}% {r.region} -> {', '.join(r.allowed)}" for r in c.residency
    )
    privacy = "strict: stays on the edge" if c.strict else "may leave the edge"
    runs = f", the workload runs {w.duration_months} months" if w.duration_months else ""
    rows = [
        ["requests per day", f"{w.requests_per_day:,.0f} (peak x{w.peak_to_average:g})"],
        ["growth per year", f"{w.growth_per_year * 100:g}%"],
        [
            "tokens per request",
            f"{w.tokens.input_per_request:g} in, {w.tokens.output_per_request:g} out",
        ],
        ["personal data", f"{c.personal_data_share * 100:g}% ({privacy})"],
        ["residency", residency or "none"],
        ["users", ", ".join(f"{k} {v * 100:g}%" for k, v in w.users.regions.items())],
        [
            "SLO",
            f"TTFT {w.slo.ttft_ms:g} ms, end-to-end {w.slo.e2e_ms:g} ms at "
            f"{w.slo.percentile}; availability {w.availability_target * 100:g}%",
        ],
        ["horizon", f"{w.horizon_years} years{runs}"],
    ]
    return table_html(["input", "value"], rows)


def render_report(d: Decision) -> str:
    """The whole HTML page for one decision."""
    w = d.inputs.workload
    tornado = charts.tornado_chart(d)
    sections = [
        Section("Decision", _summary(d)),
        Section("Workload", _workload(d)),
        Section(f"Options over {w.months()} months", _options_table(d) + _breakdown(d)),
        Section(
            "Cost",
            figures=[charts.tco_over_time(d), charts.cost_per_1k(d)],
            captions=["cumulative cost per option", "cost per 1,000 requests against volume"],
        ),
        Section("Latency per tier against the SLO", _tiers(d), figures=[charts.latency_vs_slo(d)]),
        *(
            [
                Section(
                    "Screenshots on the edge",
                    table_html(["quantity", "value"], [list(r) for r in vision_lines(d.vision)]),
                    note=f"from {d.vision.source}",
                )
            ]
            if d.vision is not None
            else []
        ),
        Section(
            "Sensitivity: each input at -50% and +50%",
            figures=[tornado] if tornado else [],
            note="bars: the recommended option's TCO; a label marks an end where the "
            "recommendation changes",
        ),
    ]
    return render_page(
        f"edgecloud decide: {w.name}",
        sections,
        subtitle="every formula is documented in docs/decide.md",
        generated_by="edgecloud decide",
    )
