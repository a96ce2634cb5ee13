"""Commands of edgecloud.gateway (placeholder until the package lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount this package's commands on the root app."""
    _ = app
