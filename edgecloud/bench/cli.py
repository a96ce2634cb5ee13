"""`edgecloud bench URL ...` and `edgecloud bench compare A.json B.json ...`."""

from __future__ import annotations

from pathlib import Path

import typer

_HELP = """Measure any OpenAI-compatible endpoint: latency, throughput and its knee, cold start,
resources and energy. Writes a versioned results file (read by `edgecloud decide`) and an
optional HTML report.

[b]Examples[/b]

  edgecloud bench http://127.0.0.1:8080 --concurrency 1,2,4,8 --out edge.json --report edge.html

  edgecloud bench http://127.0.0.1:8080 --scenario rate --rate 0.5,1,2 --duration 30

  edgecloud bench https://api.example/v1 --api-key-env CLOUD_API_KEY --label cloud --out cloud.json

  edgecloud bench http://127.0.0.1:8099 --cold-start "edgecloud serve --lazy --port 8099"

  edgecloud bench compare edge.json cloud.json --report edge-vs-cloud.html
"""


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        msg = f"{name} wants numbers separated by commas, got {text!r}"
        raise typer.BadParameter(msg) from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"{name} wants positive numbers, got {text!r}")
    return values


def register(app: typer.Typer) -> None:
    """Mount this package's commands on the root app."""
    app.command("bench", help=_HELP, no_args_is_help=True)(bench)


def bench(
    target: str = typer.Argument(
        ...,
        help="Endpoint URL (http://host:port or .../v1), or 'compare' followed by results files.",
    ),
    files: list[str] = typer.Argument(None, help="With 'compare': the results files."),
    model: str = typer.Option(None, help="Model id to request (default: the first listed)."),
    api_key_env: str = typer.Option(None, help="Name of the env var holding the API key."),
    workload: str = typer.Option(
        "short-chat",
        help="short-chat | long-context | phone-agent | FILE.jsonl (one request body per line).",
    ),
    scenario: str = typer.Option("concurrency", help="single | concurrency | rate | burst."),
    concurrency: str = typer.Option("1,2,4,8", help="Concurrency levels (burst: burst sizes)."),
    rate: str = typer.Option("0.5,1,2", help="Open-loop Poisson rates, requests/s."),
    requests: int = typer.Option(None, help="Requests per level (default depends on scenario)."),
    duration: float = typer.Option(None, help="Seconds per level instead of a request count."),
    max_tokens: int = typer.Option(
        None, help="max_tokens of requests that do not set one (default 64; phone-agent 16)."
    ),
    slo_ttft_ms: float = typer.Option(None, help="SLO on time to first token, for goodput."),
    slo_e2e_ms: float = typer.Option(None, help="SLO on end-to-end latency, for goodput."),
    out: Path = typer.Option(Path("bench-results.json"), help="Results file (JSON)."),
    report: Path = typer.Option(None, help="Also write an HTML report here."),
    label: str = typer.Option("", help="Name of this run in reports (e.g. edge, cloud)."),
    seed: int = typer.Option(0, help="Seed of workloads and arrival schedules."),
    warmup: int = typer.Option(1, help="Unrecorded warm-up requests before measuring."),
    timeout: float = typer.Option(120.0, help="Per-request timeout, seconds."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Stream (real TTFT)."),
    server_pid: int = typer.Option(
        None, help="PID of a local server to sample (default: found by the URL's port)."
    ),
    watts_per_core: float = typer.Option(
        10.0, help="Watts of a busy core, for the energy estimate when no counter is readable."
    ),
    cold_start: str = typer.Option(
        None,
        "--cold-start",
        help="Server command to launch and time (start, /readyz, first token); then run the load.",
    ),
    cold_start_runs: int = typer.Option(3, help="Launches for --cold-start."),
    cold_start_only: bool = typer.Option(False, help="Only measure the cold start."),
    tokenizer: str = typer.Option(
        None,
        help="A .gguf or tokenizer.json that counts output "
        "tokens when the server gives no usage (else: chunks).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    from edgecloud.bench import app as bench_app

    if target == "compare":
        if not files or len(files) < 1:
            raise typer.BadParameter("compare wants one or more results files")
        raise typer.Exit(bench_app.compare_command(files, report))
    if files:
        raise typer.BadParameter(f"unexpected arguments: {' '.join(files)}")
    if scenario not in ("single", "concurrency", "rate", "burst"):
        raise typer.BadParameter("--scenario must be single, concurrency, rate or burst")
    levels = (
        [1.0]
        if scenario == "single"
        else _floats(
            rate if scenario == "rate" else concurrency,
            "--rate" if scenario == "rate" else "--concurrency",
        )
    )
    if scenario in ("concurrency", "burst") and any(v != int(v) for v in levels):
        raise typer.BadParameter("--concurrency wants whole numbers")
    from edgecloud.bench.options import BenchOptions

    slo = {k: v for k, v in (("ttft_ms", slo_ttft_ms), ("e2e_ms", slo_e2e_ms)) if v}
    opts = BenchOptions(
        model=model,
        api_key_env=api_key_env,
        workload=workload,
        scenario=scenario,  # type: ignore[arg-type]  # checked above
        levels=tuple(levels),
        requests=requests,
        duration=duration,
        max_tokens=max_tokens,
        slo=slo,
        out=out,
        report=report,
        label=label,
        seed=seed,
        warmup=warmup,
        timeout=timeout,
        stream=stream,
        server_pid=server_pid,
        watts_per_core=watts_per_core,
        cold_start=cold_start,
        cold_start_runs=cold_start_runs,
        cold_start_only=cold_start_only,
        tokenizer=tokenizer,
        quiet=quiet,
    )
    raise typer.Exit(bench_app.run_command(target, opts))
