"""What `edgecloud bench URL` was told: the command line's settings as one typed value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Scenario = Literal["single", "concurrency", "rate", "burst"]
DEFAULT_MAX_TOKENS = 64


@dataclass(frozen=True)
class BenchOptions:
    """The settings of one bench run; the CLI owns the defaults and checks the values."""

    model: str | None  # None: the first model the endpoint lists
    api_key_env: str | None
    workload: str  # a built-in name or a JSONL file
    scenario: Scenario
    levels: tuple[float, ...]  # concurrencies, rates or burst sizes
    requests: int | None  # per level; None: the scenario's default
    duration: float | None  # seconds per level instead of a request count
    max_tokens: int | None  # None: the workload's own default, else DEFAULT_MAX_TOKENS
    slo: Mapping[str, float]  # ttft_ms / e2e_ms, for goodput
    out: Path
    report: Path | None
    label: str
    seed: int
    warmup: int
    timeout: float
    stream: bool
    server_pid: int | None
    watts_per_core: float
    cold_start: str | None  # a server command to launch and time
    cold_start_runs: int
    cold_start_only: bool
    tokenizer: str | None
    quiet: bool
