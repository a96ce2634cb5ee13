"""Files the demo ships as package data (an example workload and prices for `decide`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def path(name: str) -> Path:
    """Path of a packaged demo file."""
    return Path(str(resources.files("edgecloud.demo").joinpath("data", name)))
