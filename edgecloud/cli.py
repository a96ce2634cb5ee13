"""The `edgecloud` command line: thin wrappers that parse, call the library and render.

Each capability owns its commands in `edgecloud/<package>/cli.py`; this module only mounts
them, so `edgecloud --help` stays fast (heavy imports happen inside the commands).
"""

from __future__ import annotations

import typer

from edgecloud import __version__
from edgecloud.bench import cli as bench_cli
from edgecloud.decide import cli as decide_cli
from edgecloud.demo import cli as demo_cli
from edgecloud.deploy import cli as deploy_cli
from edgecloud.fleet import cli as fleet_cli
from edgecloud.gateway import cli as gateway_cli
from edgecloud.node import cli as node_cli

app = typer.Typer(
    name="edgecloud",
    help="Run an AI model where it runs best - edge or cloud - decided per request, measured, "
    "and updated over the air.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgecloud {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """edgecloud: serve, gateway, bench, decide, release, agent, fleet, deploy, demo."""


node_cli.register(app)
gateway_cli.register(app)
bench_cli.register(app)
decide_cli.register(app)
fleet_cli.register(app)
deploy_cli.register(app)
demo_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
