"""Commands of edgecloud.decide: `edgecloud decide`."""

from __future__ import annotations

from pathlib import Path

import typer

_EPILOG = (
    "Example: edgecloud decide --workload examples/decide/workload.yaml "
    "--prices examples/decide/prices.yaml --bench edge=examples/decide/bench-edge.json "
    "--bench cloud=examples/decide/bench-cloud.json --report decision.html"
)


def decide(
    workload: Path = typer.Option(
        ..., "--workload", "-w", metavar="FILE", help="Workload profile (YAML)."
    ),
    prices: Path | None = typer.Option(
        None,
        "--prices",
        "-p",
        metavar="FILE",
        help="Price list (YAML); default: built-in illustrative prices.",
    ),
    bench: list[str] = typer.Option(
        [],
        "--bench",
        "-b",
        metavar="[edge=|cloud=]FILE",
        help="A results file of `edgecloud bench`: edge=FILE, cloud=FILE, or FILE labelled "
        "with its tier. Repeat for each tier.",
    ),
    report: Path | None = typer.Option(
        None, "--report", metavar="FILE", help="Write the HTML report here."
    ),
    json_out: Path | None = typer.Option(
        None, "--json", metavar="FILE", help="Write the decision as JSON."
    ),
    gateway: Path | None = typer.Option(
        None,
        "--emit-gateway-config",
        metavar="FILE",
        help="Write the gateway config that carries it out.",
    ),
) -> None:
    """Where to run (edge, cloud or hybrid), what it costs over the horizon, and why."""
    from rich.console import Console

    from edgecloud.decide.analysis import decide as run_decision
    from edgecloud.decide.errors import DecideError
    from edgecloud.decide.gateway_config import gateway_config, render_gateway_yaml
    from edgecloud.decide.loading import load_inputs
    from edgecloud.decide.summary import print_summary

    err = Console(stderr=True)
    try:
        inputs = load_inputs(workload, prices, bench)
        decision = run_decision(inputs)
    except DecideError as exc:
        err.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    print_summary(decision)
    written = []
    if report is not None:
        from edgecloud.decide.decision_report import render_report

        report.write_text(render_report(decision), encoding="utf-8")
        written.append(str(report))
    if json_out is not None:
        json_out.write_text(decision.model_dump_json(indent=1), encoding="utf-8")
        written.append(str(json_out))
    if gateway is not None:
        if decision.recommended is None:
            err.print("[red]error:[/] no option meets the compliance rules: no gateway config")
            raise typer.Exit(2)
        option = decision.recommended
        plan = decision.options[option].cost.years[0]
        text = render_gateway_yaml(
            gateway_config(inputs, option, plan), option, inputs.workload.name
        )
        gateway.write_text(text, encoding="utf-8")
        written.append(str(gateway))
    for path in written:
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Mount this package's commands on the root app."""
    app.command("decide", epilog=_EPILOG)(decide)
