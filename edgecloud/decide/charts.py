"""The decision report's charts: matplotlib figures made inline SVG by edgecloud.html_report."""

from __future__ import annotations

from typing import Any

from edgecloud.decide.analysis import Decision
from edgecloud.decide.decision import LABEL
from edgecloud.html_report import figure_svg, new_figure

COLORS = {"edge": "#2a9d8f", "cloud": "#457b9d", "hybrid": "#e9c46a"}


def tco_over_time(d: Decision) -> str:
    """Cumulative cost per option, month by month."""
    cur = d.inputs.prices.currency
    fig, ax = new_figure()
    for option, r in d.options.items():
        series = r.cost.cumulative()
        ax.plot(
            range(1, len(series) + 1),
            [v / 1e3 for v in series],
            "-" if r.feasible else ":",
            color=COLORS[option],
            label=LABEL[option] + ("" if r.feasible else " (fails a check)"),
        )
    ax.set_xlabel("month")
    ax.set_ylabel(f"cumulative cost (k {cur})")
    ax.legend()
    return figure_svg(fig, title="cumulative cost per option")


def cost_per_1k(d: Decision) -> str:
    """Cost per 1,000 requests against volume, with the break-even and today's volume."""
    cur = d.inputs.prices.currency
    curve = d.cost_curve
    fig, ax = new_figure()
    for option in d.options:
        ax.plot(curve["requests_per_day"], curve[option], color=COLORS[option], label=LABEL[option])
    be = d.break_even_requests_per_day
    if be:
        ax.axvline(be, color="#e76f51", ls="--", label=f"break-even {be:,.0f}/day")
    ax.axvline(d.inputs.workload.requests_per_day, color="#555", ls=":", label="this workload")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("requests per day")
    ax.set_ylabel(f"cost per 1,000 requests ({cur})")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend()
    return figure_svg(fig, title="cost per 1,000 requests against volume")


def _latency_axes(ax: Any, d: Decision, key: str) -> None:
    for tier in (d.inputs.edge, d.inputs.cloud):
        color = COLORS[tier.tier]
        if tier.points:
            xs = [p.level for p in tier.points]
            ys = [getattr(p, key) or 0 for p in tier.points]
            ax.plot(xs, ys, "o-", color=color, label=f"{tier.tier} (measured)")
            if tier.operating_level is not None:
                y = getattr(tier, key) or 0
                ax.plot([tier.operating_level], [y], "s", color=color, ms=9, mfc="none")
        else:
            value = getattr(tier, key) or 0
            ax.axhline(value, color=color, ls="-.", label=f"{tier.tier} (assumed)")


def latency_vs_slo(d: Decision) -> str:
    """TTFT and end-to-end latency per tier and load level, against the SLO."""
    from matplotlib.figure import Figure

    slo = d.inputs.workload.slo
    fig = Figure(figsize=(11.0, 3.6), layout="constrained")  # a full-width figure
    axes = fig.subplots(1, 2)
    measured = any(t.points for t in (d.inputs.edge, d.inputs.cloud))
    panels = (("ttft_ms", "TTFT", slo.ttft_ms), ("e2e_ms", "end-to-end", slo.e2e_ms))
    for ax, (key, title, limit) in zip(axes, panels, strict=True):
        _latency_axes(ax, d, key)
        ax.axhline(limit, color="#e76f51", ls="--", label="SLO")
        ax.set_title(f"{title} {slo.percentile} (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if measured:
            ax.set_xlabel("load level (square: operating point)")
            ax.set_xscale("log", base=2)
        else:
            ax.set_xticks([])
    axes[0].legend()
    return figure_svg(fig, title="latency per tier against the SLO")


def tornado_chart(d: Decision) -> str:
    """Three-year TCO of the chosen option with each input at -50% and +50%."""
    if d.recommended is None or not d.tornado:
        return ""
    cur = d.inputs.prices.currency
    base = d.options[d.recommended].cost.tco / 1e3
    bars = list(reversed(d.tornado))
    fig, ax = new_figure(11.0, 0.8 + 0.3 * len(bars))  # a full-width figure
    for i, b in enumerate(bars):
        lo, hi = b.low_tco / 1e3, b.high_tco / 1e3
        ax.barh(i, lo - base, left=base, color="#8ab17d", height=0.6)
        ax.barh(i, hi - base, left=base, color="#e76f51", height=0.6)
        for value, choice in ((lo, b.low_choice), (hi, b.high_choice)):
            if choice != d.recommended:
                side = "left" if value >= base else "right"
                ax.annotate(f"-> {choice or 'none'}", (value, i), fontsize=8, va="center", ha=side)
    ax.axvline(base, color="#333", lw=1)
    ax.set_yticks(range(len(bars)), [b.name for b in bars])
    ax.set_xlabel(f"{LABEL[d.recommended]} TCO (k {cur}); green -50%, red +50%")
    ax.grid(False, axis="y")
    return figure_svg(fig, title="sensitivity: each input at -50% and +50%")
