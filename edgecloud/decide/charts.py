"""The decision report's charts, drawn with matplotlib (Agg) as inline SVG text."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgecloud.decide.analysis import Decision
from edgecloud.decide.decision import LABEL

COLORS = {"edge": "#2a9d8f", "cloud": "#457b9d", "hybrid": "#e9c46a"}


@contextmanager
def _figure(name: str, size: tuple[float, float] = (7.0, 3.6)) -> Iterator[tuple[Any, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A salt per chart keeps the SVG element ids unique when several sit in one page.
    with matplotlib.rc_context(
        {"svg.hashsalt": f"decide-{name}", "svg.fonttype": "none", "font.size": 9}
    ):
        fig, ax = plt.subplots(figsize=size)
        try:
            yield fig, ax
        finally:
            plt.close(fig)


def _svg(fig: Any, name: str) -> str:
    """The figure as an <svg> element whose ids (and references to them) carry `name`."""
    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg")
    text = re.sub(r"^.*?(<svg)", r"\1", buf.getvalue(), count=1, flags=re.S)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", text)
    return re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', text)


def tco_over_time(d: Decision) -> str:
    """Cumulative cost per option, month by month."""
    cur = d.inputs.prices.currency
    with _figure("tco") as (fig, ax):
        for option, r in d.options.items():
            series = r.cost.cumulative()
            style = "-" if r.feasible else ":"
            ax.plot(
                range(1, len(series) + 1),
                [v / 1e3 for v in series],
                style,
                color=COLORS[option],
                label=f"{LABEL[option]}" + ("" if r.feasible else " (fails a check)"),
            )
        ax.set_xlabel("month")
        ax.set_ylabel(f"cumulative cost (k {cur})")
        ax.grid(alpha=0.3)
        ax.legend()
        return _svg(fig, "tco")


def cost_per_1k(d: Decision) -> str:
    """Cost per 1,000 requests against volume, with the break-even and today's volume."""
    cur = d.inputs.prices.currency
    curve = d.cost_curve
    with _figure("per1k") as (fig, ax):
        for option in d.options:
            ax.plot(
                curve["requests_per_day"], curve[option], color=COLORS[option], label=LABEL[option]
            )
        if d.break_even_requests_per_day:
            ax.axvline(
                d.break_even_requests_per_day,
                color="#e76f51",
                ls="--",
                label=f"break-even {d.break_even_requests_per_day:,.0f}/day",
            )
        ax.axvline(d.inputs.workload.requests_per_day, color="#555", ls=":", label="this workload")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("requests per day")
        ax.set_ylabel(f"cost per 1,000 requests ({cur})")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        return _svg(fig, "per1k")


def latency_vs_slo(d: Decision) -> str:
    """TTFT and end-to-end latency per tier and load level, against the SLO."""
    slo = d.inputs.workload.slo
    with _figure("latency", (7.0, 3.2)) as (fig, ax):
        fig.clf()
        axes = fig.subplots(1, 2)
        for tier in (d.inputs.edge, d.inputs.cloud):
            color = COLORS[tier.tier]
            for a, key in zip(axes, ("ttft_ms", "e2e_ms"), strict=True):
                if tier.points:
                    xs = [p.level for p in tier.points]
                    ys = [getattr(p, key) or 0 for p in tier.points]
                    a.plot(xs, ys, "o-", color=color, label=f"{tier.tier} (measured)")
                    if tier.operating_level is not None:
                        a.plot(
                            [tier.operating_level],
                            [getattr(tier, key) or 0],
                            "s",
                            color=color,
                            ms=9,
                            mfc="none",
                        )
                else:
                    a.axhline(
                        getattr(tier, key) or 0,
                        color=color,
                        ls="-.",
                        label=f"{tier.tier} (assumed)",
                    )
        measured = any(t.points for t in (d.inputs.edge, d.inputs.cloud))
        for a, key, limit in zip(
            axes, ("TTFT", "end-to-end"), (slo.ttft_ms, slo.e2e_ms), strict=True
        ):
            a.axhline(limit, color="#e76f51", ls="--", label="SLO")
            a.set_title(f"{key} {slo.percentile} (ms)")
            a.set_ylim(bottom=0)
            if measured:
                a.set_xlabel("load level (square: operating point)")
                a.set_xscale("log", base=2)
            else:
                a.set_xticks([])
            a.grid(alpha=0.3)
        axes[0].legend()
        return _svg(fig, "latency")


def tornado_chart(d: Decision) -> str:
    """Three-year TCO of the chosen option with each input at -50% and +50%."""
    cur = d.inputs.prices.currency
    if d.recommended is None or not d.tornado:
        return ""
    base = d.options[d.recommended].cost.tco / 1e3
    bars = list(reversed(d.tornado))
    with _figure("tornado", (7.0, 0.5 + 0.35 * len(bars))) as (fig, ax):
        for i, b in enumerate(bars):
            lo, hi = b.low_tco / 1e3, b.high_tco / 1e3
            ax.barh(i, lo - base, left=base, color="#8ab17d", height=0.6)
            ax.barh(i, hi - base, left=base, color="#e76f51", height=0.6)
            for value, choice in ((lo, b.low_choice), (hi, b.high_choice)):
                if choice != d.recommended:
                    ax.annotate(
                        f"-> {choice or 'none'}",
                        (value, i),
                        fontsize=8,
                        va="center",
                        ha="left" if value >= base else "right",
                    )
        ax.axvline(base, color="#333", lw=1)
        ax.set_yticks(range(len(bars)), [b.name for b in bars])
        ax.set_xlabel(f"{LABEL[d.recommended]} TCO (k {cur}); green -50%, red +50%")
        ax.grid(alpha=0.3, axis="x")
        return _svg(fig, "tornado")
