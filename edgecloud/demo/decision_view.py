"""The decision inside the demo report: read `decide --json` output, show its verdict and charts."""

from __future__ import annotations

from typing import Any

from edgecloud.html_report import escape, table_html


def decision_summary_html(doc: dict[str, Any]) -> str:
    """Recommendation, ranked reasons and the TCO of each option, as HTML."""
    rec = doc.get("recommended") or "none (no option meets every check)"
    parts = [f"<p><b>Recommendation: {escape(rec)}</b></p>"]
    reasons = doc.get("reasons") or []
    if reasons:
        items = "".join(f"<li>{escape(r.get('text', ''))}</li>" for r in reasons)
        parts.append(f"<ol>{items}</ol>")
    rows = []
    for name, opt in (doc.get("options") or {}).items():
        cost = opt.get("cost") or {}
        failed = [c.get("name", "") for c in opt.get("checks", []) if not c.get("passed")]
        rows.append(
            [
                name,
                cost.get("capex"),
                cost.get("opex"),
                cost.get("tco"),
                "yes" if not failed else "no: " + ", ".join(failed),
            ]
        )
    if rows:
        first: dict[str, Any] = next(iter((doc.get("options") or {}).values()), {})
        cur = (first.get("cost") or {}).get("currency", "")
        parts.append(
            table_html(
                ["option", f"capex {cur}", f"opex {cur}", f"TCO {cur}", "meets every check"], rows
            )
        )
    be = doc.get("break_even_requests_per_day")
    if be:
        parts.append(f"<p>Break-even volume between edge and cloud: {be:,.0f} requests/day.</p>")
    return "".join(parts)


def decision_figures(doc: dict[str, Any]) -> list[str]:
    """decide's own charts (TCO over time, cost per 1k vs volume, latency vs SLO, tornado)."""
    try:
        from edgecloud.decide import charts
        from edgecloud.decide.analysis import Decision

        decision = Decision.model_validate(_without_computed(doc))
    except Exception:  # noqa: BLE001 - a report without charts beats no report
        return []
    figures = []
    for make in (
        charts.tco_over_time,
        charts.cost_per_1k,
        charts.latency_vs_slo,
        charts.tornado_chart,
    ):
        try:
            figures.append(make(decision))
        except Exception:  # noqa: BLE001
            continue
    return figures


def _without_computed(value: Any) -> Any:
    """Drop computed fields (feasible, capex, opex, tco) that decide writes but does not read."""
    if isinstance(value, dict):
        return {
            k: _without_computed(v)
            for k, v in value.items()
            if k not in ("feasible", "capex", "opex", "tco")
        }
    if isinstance(value, list):
        return [_without_computed(v) for v in value]
    return value
