"""The demo's options and its result: shared by the runner, the report and the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.demo.driver import Outcome
from edgecloud.demo.wan import LinkProfile


@dataclass
class DemoOptions:
    """What `edgecloud demo` was asked to do."""

    out_dir: Path
    quick: bool = False
    link: LinkProfile = field(default_factory=LinkProfile)
    max_tokens: int = 24
    bench: bool = True
    decide: bool = True


@dataclass
class DemoResult:
    """Every request's outcome, the guarantees measured, and the files written."""

    outcomes: list[Outcome]
    guarantees: dict[str, Any]
    files: dict[str, str]
    pids: list[int]
    gateway_metrics: dict[str, float]
