"""`edgecloud demo`: the whole system, end to end, on the embedded default model."""

from __future__ import annotations

from pathlib import Path

import typer

DEMO_HELP = """Run the whole system end to end on the embedded model, in a few minutes.

Starts an edge node, a "cloud" node behind an emulated WAN link (added RTT, jitter and a
bandwidth cap: emulated, and labelled so), and the gateway; drives a mixed phone-agent
workload with a live view (public text, personal data, EU/CN-tagged data, a screenshot, a
burst, an edge outage, a cloud outage); benches both tiers; runs `decide`; writes one HTML
report. Every process it starts is stopped on exit or Ctrl-C.

[bold]Examples[/bold]

  edgecloud demo
  edgecloud demo --quick --out demo-out
  edgecloud demo --rtt-ms 120 --jitter-ms 20 --bandwidth-mbit 10
"""


def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for logs, results and the report."),
    quick: bool = typer.Option(False, "--quick", help="Fewer requests (every phase still runs)."),
    rtt_ms: float = typer.Option(60.0, help="Emulated WAN round-trip time to the cloud, ms."),
    jitter_ms: float = typer.Option(5.0, help="Emulated WAN jitter, ms."),
    bandwidth_mbit: float = typer.Option(50.0, help="Emulated WAN bandwidth, Mbit/s."),
    max_tokens: int = typer.Option(24, help="max_tokens of every demo request."),
    bench: bool = typer.Option(True, "--bench/--no-bench", help="Bench both tiers at the end."),
    decide: bool = typer.Option(True, "--decide/--no-decide", help="Run decide at the end."),
) -> None:
    from rich.console import Console

    from edgecloud.demo.runner import run_demo
    from edgecloud.demo.summary import print_summary
    from edgecloud.demo.types import DemoOptions
    from edgecloud.demo.wan import LinkProfile

    console = Console()
    opts = DemoOptions(
        out_dir=out,
        quick=quick,
        link=LinkProfile(rtt_ms, jitter_ms, bandwidth_mbit),
        max_tokens=max_tokens,
        bench=bench,
        decide=decide,
    )
    try:
        result = run_demo(opts, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process the demo started has been stopped[/]")
        raise typer.Exit(130) from None
    print_summary(console, opts, result)
    if (
        result.guarantees["private_placed_in_cloud"]
        or result.guarantees["cloud_link_private_marker_hits"]
    ):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount `demo` on the root app."""
    app.command("demo", help=DEMO_HELP)(demo)
