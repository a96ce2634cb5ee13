"""The terminal summary of a decision, rendered with rich."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from edgecloud.decide.analysis import Decision
from edgecloud.decide.decision import LABEL
from edgecloud.decide.sizing import vision_lines


def summary(d: Decision) -> Group:
    """A rich renderable: the choice, the options table, the reasons and the flip points."""
    cur = d.inputs.prices.currency
    months = d.inputs.workload.months()
    table = Table(title=f"Total cost over {months} months ({cur})", title_justify="left")
    for col in ("option", "TCO", "capex", "opex", "boxes", "checks"):
        table.add_column(col, justify="left" if col in ("option", "checks") else "right")
    for option, r in d.options.items():
        failed = [c.name for c in r.checks if not c.passed]
        mark = "[green]all pass[/]" if not failed else f"[red]fails {', '.join(failed)}[/]"
        name = f"[bold]{LABEL[option]}[/]" if option == d.recommended else LABEL[option]
        table.add_row(
            name,
            f"{r.cost.tco:,.0f}",
            f"{r.cost.capex:,.0f}",
            f"{r.cost.opex:,.0f}",
            str(r.cost.years[0].boxes),
            mark,
        )
    if d.recommended is None:
        head = "[bold red]No option meets the compliance rules.[/]"
    else:
        note = "" if d.meets_all_checks else " [red](still fails a check)[/]"
        head = f"Recommended: [bold green]{LABEL[d.recommended]}[/]{note}"
    reasons = "\n".join(f"{r.rank}. {r.text}" for r in d.reasons)
    lines = [
        f"{'below' if f.direction == 'below' else 'above'} {f.requests_per_day:,.0f} "
        f"requests/day -> {LABEL.get(f.to or '', 'none')}"
        for f in d.flips
    ]
    if d.break_even_requests_per_day:
        lines.insert(
            0, f"break-even edge vs cloud: {d.break_even_requests_per_day:,.0f} requests/day"
        )
    vision = []
    if d.vision is not None:
        rows = "\n".join(f"{k}: {v}" for k, v in vision_lines(d.vision))
        vision = [Panel(rows, title="screenshots on the edge", expand=False)]
    return Group(
        Panel(head, expand=False),
        table,
        *vision,
        Panel(reasons, title="why", expand=False),
        Panel(
            "\n".join(lines) or "no flip within 1/1000x..1000x today's volume",
            title="where the answer flips",
            expand=False,
        ),
    )


def print_summary(d: Decision, console: Console | None = None) -> None:
    (console or Console()).print(summary(d))
