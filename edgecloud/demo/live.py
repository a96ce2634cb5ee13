"""The demo's live view: a rolling table of the last requests that reads well at 80 columns."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgecloud.demo.driver import Outcome

_COLORS = {"edge": "green", "cloud": "cyan", "refused": "yellow"}


def live_table(outcomes: Sequence[Outcome], phase: str, rows: int = 14) -> Table:
    """The last `rows` outcomes, one line each: where a request ran (the endpoint, coloured by
    tier, or the refusal) and why. Long cells are cut with an ellipsis, never wrapped."""
    t = Table(
        title=f"edgecloud demo — {phase}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        expand=True,
        show_edge=False,
        padding=0,  # the box's column separator is the one space between columns
    )
    # Fixed widths add up to 56 with the gaps, so the reason keeps 24 columns of 80.
    t.add_column("#", justify="right", width=3, no_wrap=True)
    t.add_column("phase", width=13, no_wrap=True, overflow="ellipsis")
    t.add_column("kind", width=12, no_wrap=True, overflow="ellipsis")
    t.add_column("ran on", width=10, no_wrap=True, overflow="ellipsis")
    t.add_column("reason", ratio=1, no_wrap=True, overflow="ellipsis")
    t.add_column("status", justify="right", width=6, no_wrap=True)
    t.add_column("ms", justify="right", width=6, no_wrap=True)
    start = max(0, len(outcomes) - rows)
    for i, o in enumerate(outcomes[start:], start=start + 1):
        color = _COLORS.get(o.placement, "red")
        where = o.endpoint if o.placement in ("edge", "cloud") else o.placement or "error"
        t.add_row(
            str(i),
            o.phase,
            o.kind + (" 🔒" if o.private else ""),
            f"[{color}]{where}[/]",
            o.reason,
            str(o.status),
            f"{o.e2e_ms:,.0f}",
        )
    return t


class LiveView:
    """The rolling table of the last requests, with the current phase in the title."""

    def __init__(self, console: Console, rows: int = 14) -> None:
        self.rows = rows
        self.outcomes: list[Outcome] = []
        self.phase = ""
        self.live = Live(self._table(), console=console, refresh_per_second=8, transient=False)

    def _table(self) -> Table:
        return live_table(self.outcomes, self.phase, self.rows)

    def add(self, o: Outcome) -> None:
        self.outcomes.append(o)
        self.live.update(self._table())

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.live.update(self._table())
