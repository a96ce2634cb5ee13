"""The demo's live table reads well at 80 columns; its report prints numbers for humans."""

from __future__ import annotations

import io

from rich.console import Console

from edgecloud.demo.decision_view import decision_summary_html
from edgecloud.demo.driver import Outcome
from edgecloud.demo.live import live_table


def _outcome(i: int, placement: str, endpoint: str, reason: str, private: bool) -> Outcome:
    return Outcome(
        phase=["public text", "personal data", "EU-tagged", "edge outage"][i % 4],
        kind=["public", "bank card", "eu", "screenshot"][i % 4],
        private=private,
        status=200 if placement in ("edge", "cloud") else 503,
        placement=placement,
        endpoint=endpoint,
        reason=reason,
        ttft_ms=12.0,
        e2e_ms=12345.6 if i == 3 else 87.0,
        sent_at_s=float(i),
    )


OUTCOMES = [
    _outcome(0, "cloud", "cloud-eu", "load.offload", False),
    _outcome(1, "edge", "edge-local", "privacy.pii.bank_card", True),
    _outcome(2, "refused", "-", "no_allowed_endpoint", True),
    _outcome(3, "edge", "edge-local", "capability.vision+privacy.image", True),
]


def _render(width: int) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, legacy_windows=False)
    console.print(live_table(OUTCOMES, "edge outage (edge node killed)"))
    return out.getvalue().splitlines()


def test_every_cell_sits_under_its_header() -> None:
    table = live_table(OUTCOMES, "phase")
    assert len(table.columns) == 7
    assert all(len(col._cells) == len(OUTCOMES) for col in table.columns)
    where = [str(c) for c in table.columns[3]._cells]
    assert where == ["[cyan]cloud-eu[/]", "[green]edge-local[/]", "[yellow]refused[/]",
                     "[green]edge-local[/]"]


def test_one_line_per_request_at_80_columns() -> None:
    for width in (80, 120):
        lines = _render(width)
        assert max(len(line) for line in lines) <= width
        rows = [line for line in lines if line.strip()[:1].isdigit()]
        assert len(rows) == len(OUTCOMES), "\n".join(lines)  # nothing wrapped onto a 2nd line
        assert "12,346" in rows[3] and "edge-local" in rows[1]


def test_the_decision_table_has_no_exponents() -> None:
    doc = {
        "recommended": "edge",
        "options": {
            "edge": {"cost": {"capex": 10000.0, "opex": 2500.5, "tco": 12500.5,
                              "currency": "EUR"}, "checks": []},
        },
    }
    html = decision_summary_html(doc)
    assert "1e+04" not in html and "10,000" in html and "12,500" in html
