"""The demo's closing summary in the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edgecloud.demo.types import DemoOptions, DemoResult


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def print_summary(console: Console, opts: DemoOptions, result: DemoResult) -> None:
    g = result.guarantees
    t = Table(title="placements by reason")
    for col in ("placement", "reason", "requests"):
        t.add_column(col)
    for r in g["by_reason"]:
        t.add_row(r["placement"], r["reason"], str(r["count"]))
    console.print(t)
    lat = Table(title=f"latency per tier, ms (cloud over an {opts.link.describe()})")
    for col in ("tier", "requests", "e2e p50", "e2e p95", "TTFT p50"):
        lat.add_column(col)
    for tier, v in g["latency_ms"].items():
        lat.add_row(tier, str(v["count"]), _fmt(v["p50"]), _fmt(v["p95"]), _fmt(v["ttft_p50"]))
    console.print(lat)
    console.print(f"fallbacks: {g['fallbacks']}   refusals (fail closed): {g['refusals']}")
    held = g["private_placed_in_cloud"] == 0 and g["cloud_link_private_marker_hits"] == 0
    color = "green" if held else "red"
    console.print(
        f"[{color}]private requests that reached the cloud: {g['private_placed_in_cloud']} "
        f"of {g['private_requests']}; private data seen on the cloud link: "
        f"{g['cloud_link_private_marker_hits']} (byte scan of {g['cloud_link_bytes']:,} bytes)[/]"
    )
    console.print(f"private requests answered from the cloud with surrogates (edge down): "
                  f"{g['private_sent_as_surrogates']}")
    shot = g.get("screenshot")
    if shot:
        tokens = ", ".join(str(t) for t in shot["prompt_tokens"] if t is not None) or "–"
        console.print(
            f"screenshots read on the edge: {shot['served_on_edge']} of {shot['requests']} "
            f"(projector {shot['projector']}; prompt tokens with the image: {tokens})"
        )
    if "decision_json" in result.files:
        console.print(f"decision: {result.files['decision_json']}")
    console.print(f"[bold]report: {result.files['report']}[/]")
