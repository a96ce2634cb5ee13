"""Cold start of a real `edgecloud serve --lazy` on the embedded model, timed by the bench."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from edgecloud.bench.results import BenchResults
from edgecloud.supervise import edgecloud_command, free_port
from tests.bench.benchcli import run_bench_cli

pytestmark = pytest.mark.slow


def test_cold_start_of_a_lazy_node(embedded_model_path: str, tmp_path: Path) -> None:
    port = free_port()
    serve = shlex.join(
        edgecloud_command(
            "serve",
            "--lazy",
            "--port",
            str(port),
            "--model",
            embedded_model_path,
            "--parallel",
            "2",
            "--ctx",
            "1024",
        )
    )
    out = tmp_path / "cold.json"
    done = run_bench_cli(
        f"http://127.0.0.1:{port}",
        "--cold-start",
        serve,
        "--cold-start-runs",
        "2",
        "--concurrency",
        "2",
        "--requests",
        "4",
        "--max-tokens",
        "8",
        "--out",
        str(out),
        "-q",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    res = BenchResults.model_validate_json(out.read_text())
    assert res.complete and res.cold_start is not None
    assert len(res.cold_start.runs) == 2
    for run in res.cold_start.runs:
        # The socket answers first; the lazy node loads on the first request, then streams.
        assert 0 < run["process_start_s"] <= run["first_token_s"]
        assert run["process_start_s"] <= run["ready_s"]
    assert res.cold_start.summary["first_token_ms"].count == 2
    # The last launch stays up for the load run, and its process was sampled.
    assert res.levels and res.levels[0].ok == 4 and res.server_pid is not None
    assert res.energy is not None and "server process" in res.energy.note
