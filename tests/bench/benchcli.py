"""`edgecloud bench` as a child process of the tests, run from this checkout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from edgecloud.supervise import edgecloud_command

REPO = Path(__file__).resolve().parents[2]


def _options() -> dict[str, Any]:
    return {"text": True, "cwd": REPO, "env": {**os.environ, "PYTHONPATH": str(REPO)}}


def run_bench_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `edgecloud bench ARGS` to the end; output captured."""
    return subprocess.run(
        edgecloud_command("bench", *args), capture_output=True, timeout=timeout, **_options()
    )


def start_bench_cli(*args: str) -> subprocess.Popen[str]:
    """Start `edgecloud bench ARGS` (to signal it); output piped."""
    return subprocess.Popen(
        edgecloud_command("bench", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **_options(),
    )
