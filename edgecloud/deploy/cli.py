"""Commands of edgecloud.deploy: `edgecloud deploy k8s`."""

from __future__ import annotations

from pathlib import Path

import typer

deploy_app = typer.Typer(
    name="deploy",
    help="Render deployment files for the cloud tier (Kubernetes, Prometheus, Grafana).",
    no_args_is_help=True,
)


@deploy_app.command("k8s")
def k8s(
    out: Path | None = typer.Option(None, "--out", help="Folder to write the files into."),
    values_file: Path | None = typer.Option(
        None, "--values", help="YAML values laid over the defaults (see --print-defaults)."
    ),
    print_defaults: bool = typer.Option(
        False, "--print-defaults", help="Print the default values file and exit."
    ),
) -> None:
    """Render Kubernetes manifests, Prometheus config and alert rules, and a Grafana dashboard.

    Examples:

      edgecloud deploy k8s --print-defaults > my-values.yaml

      edgecloud deploy k8s --out deploy-out

      edgecloud deploy k8s --out deploy-out --values my-values.yaml

      kubectl apply -f deploy-out/kubernetes/
    """
    from rich.console import Console

    from edgecloud.deploy.errors import DeployError
    from edgecloud.deploy.render import render, write_tree
    from edgecloud.deploy.values import DEFAULT_VALUES_FILE, load_values

    console = Console()
    if print_defaults:
        typer.echo(DEFAULT_VALUES_FILE.read_text(encoding="utf-8"), nl=False)
        raise typer.Exit()
    if out is None:
        raise typer.BadParameter("give --out DIR (or --print-defaults)", param_hint="--out")
    try:
        values = load_values(values_file)
        written = write_tree(render(values), out)
    except DeployError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    a = values.node.autoscaling
    console.print(
        f"node autoscaling: {a.mode}, {a.min_replicas}..{a.max_replicas} replicas, "
        f"target {a.target_inflight_per_pod:g} in-flight requests per pod",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Mount this package's commands on the root app."""
    app.add_typer(deploy_app, name="deploy")
