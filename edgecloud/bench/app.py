"""The I/O edge of `edgecloud bench`: env, files, signals, progress bar, summary table."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgecloud.bench.client import Target, make_session
from edgecloud.bench.coldstart import measure_cold_start
from edgecloud.bench.errors import ColdStartError, TargetError, WorkloadError
from edgecloud.bench.options import DEFAULT_MAX_TOKENS, BenchOptions
from edgecloud.bench.results import BenchResults, ColdStart
from edgecloud.bench.runner import (
    Connection,
    RunSettings,
    api_root,
    new_results,
    preflight,
    run_bench,
)
from edgecloud.bench.workloads import Workload, encode_bodies
from edgecloud.html_report import human_number
from edgecloud.supervise import ManagedProcess

EXIT_TARGET = 2
EXIT_INTERRUPTED = 130


def write_results(results: BenchResults, path: Path) -> None:
    """Write atomically, so an interrupted write never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(results.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_results(path: str | Path) -> BenchResults:
    return BenchResults.model_validate_json(Path(path).read_text(encoding="utf-8"))


def _fmt(v: object) -> str:
    return "-" if v is None else human_number(v)


# The terminal gets the essential columns; the HTML report has them all.
_REPORT_ONLY = ("TTFT p95", "e2e p99", "TPOT p50", "bench CPU %")


def print_summary(console: Console, results: BenchResults) -> None:
    from edgecloud.bench.render import LEVEL_HEADERS, level_rows

    if not results.levels:
        return
    table = Table(
        title=f"{results.label or results.endpoint} - {results.scenario} "
        f"({results.workload}, tokens from {results.token_count_source}); ms"
    )
    cols = [i for i, h in enumerate(LEVEL_HEADERS) if h not in _REPORT_ONLY]
    for i in cols:
        table.add_column(LEVEL_HEADERS[i], justify="right")
    for row in level_rows(results.levels):
        table.add_row(*(_fmt(row[i]) for i in cols))
    console.print(table, soft_wrap=False)
    if results.knee is not None:
        console.print(f"knee: {results.knee.level:g} ({results.knee.reason})")
    if results.images is not None:
        from edgecloud.bench.render import image_line

        console.print(image_line(results))
    if results.cold_start is not None:
        parts = ", ".join(f"{k} p50 {_fmt(p.p50)}" for k, p in results.cold_start.summary.items())
        console.print(f"cold start ({len(results.cold_start.runs)} runs): {parts}")
    if results.energy is not None and results.energy.joules is not None:
        e = results.energy
        console.print(
            f"energy ({'measured, ' if e.measured else ''}{e.source}): "
            f"{_fmt(e.joules)} J, {_fmt(e.joules_per_request)} J/request, "
            f"{_fmt(e.tokens_per_joule)} tokens/J"
        )


def run_command(target: str, options: BenchOptions) -> int:
    """Run a bench from CLI options; returns the exit code."""
    from edgecloud.bench.workloads import load_workload

    console = Console(stderr=True, soft_wrap=True)  # messages stay whole lines (greppable)
    api_key = None
    if options.api_key_env:
        api_key = os.environ.get(options.api_key_env)
        if not api_key:
            console.print(f"[red]env var {options.api_key_env} is not set (it should hold the key)")
            return EXIT_TARGET
    try:
        workload = load_workload(options.workload, seed=options.seed)
    except WorkloadError as exc:
        console.print(f"[red]{exc}")
        return EXIT_TARGET
    with _event_loop() as runner:
        results = runner.run(_main(target, options, workload, api_key, console))
    write_results(results, options.out)
    if options.report:
        from edgecloud.bench.render import render_run

        options.report.write_text(render_run(results), encoding="utf-8")
    print_summary(console, results)
    where = f"results: {options.out}" + (f", report: {options.report}" if options.report else "")
    if not results.complete:
        console.print(f"[yellow]partial run: {results.note}[/]\n{where}")
        return EXIT_INTERRUPTED if "interrupted" in results.note else EXIT_TARGET
    console.print(where)
    return 0


def _event_loop() -> asyncio.Runner:
    """uvloop where it is installed: the load generator's loop is on the measuring path."""
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def _stop_on_signals(console: Console) -> asyncio.Event:
    """An event set by Ctrl-C or SIGTERM (the run then writes what it measured); a second
    Ctrl-C quits at once."""
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(EXIT_INTERRUPTED)
        console.print("[yellow]stopping: writing what was measured (Ctrl-C again to quit)")
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return stop


def _run_settings(
    options: BenchOptions, workload: Workload, bodies: list[bytes], server_pid: int | None
) -> RunSettings:
    o = options
    return RunSettings(
        scenario=o.scenario, levels=o.levels, bodies=bodies, workload=workload.name,
        requests=o.requests, duration_s=o.duration, slo=dict(o.slo), seed=o.seed,
        warmup=o.warmup, label=o.label, server_pid=server_pid, watts_per_core=o.watts_per_core,
        tokenizer=o.tokenizer, images=workload.images,
    )


async def _cold_start(
    options: BenchOptions, base: str, conn: Connection, body: bytes
) -> tuple[ColdStart, ManagedProcess | None]:
    """Launch the server command the asked number of times; the last one is kept running
    for the load levels unless only the cold start was asked for. Raises ColdStartError."""
    assert options.cold_start is not None
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    target = Target(base, conn.model or "", conn.api_key, conn.route, True, conn.timeout_s)
    return await measure_cold_start(
        options.cold_start,
        target,
        root,
        body,
        runs=options.cold_start_runs,
        timeout_s=max(options.timeout, 300.0),
        keep_last=not options.cold_start_only,
    )


async def _main(
    target: str,
    options: BenchOptions,
    workload: Workload,
    api_key: str | None,
    console: Console,
) -> BenchResults:
    """Cold start (if asked), then the load levels; always returns results to write."""
    stop = _stop_on_signals(console)
    base = api_root(target)
    conn = Connection(model=options.model, api_key=api_key, stream=options.stream,
                      route=workload.route, timeout_s=options.timeout)
    max_tokens = options.max_tokens or workload.default_max_tokens or DEFAULT_MAX_TOKENS

    def bodies(model: str | None) -> list[bytes]:
        return encode_bodies(workload, model=model or "default", max_tokens=max_tokens,
                             stream=options.stream)

    # The model id is needed before the bodies; preflight confirms it during the run.
    settings = _run_settings(options, workload, bodies(conn.model), options.server_pid)
    cold, kept = None, None
    if options.cold_start:
        try:
            cold, kept = await _cold_start(options, base, conn, settings.bodies[0])
        except ColdStartError as exc:
            results = new_results(base, settings, conn)
            results.note = str(exc)
            return results
    try:
        if not conn.model:
            conn = replace(conn, model=await _first_model(base, api_key) or None)
        pid = kept.pid if kept is not None else options.server_pid
        settings = _run_settings(options, workload, bodies(conn.model), pid)
        if options.cold_start_only:
            results = new_results(base, settings, conn)
            results.complete = True
        else:
            progress = None if options.quiet else _Bar.update
            run = run_bench(base, settings, conn, stop=stop, progress=progress)
            results = await _with_progress(run, quiet=options.quiet, console=console)
    finally:
        if kept is not None:
            await asyncio.to_thread(kept.stop)
    results.cold_start = cold
    return results


async def _first_model(base: str, api_key: str | None) -> str:
    session = make_session(1, 10.0)
    try:
        return await preflight(session, base, api_key, None, 10.0)
    except TargetError:
        return ""  # run_bench repeats the check and records the message
    finally:
        await session.aclose()


class _Bar:
    """A rich progress bar refreshed twice a second (cheap: the run only bumps counters)."""

    state: dict[float, tuple[int, int | None]] = {}

    @classmethod
    def update(cls, level: float, done: int, total: int | None) -> None:
        cls.state[level] = (done, total)


async def _with_progress(coro: Any, *, quiet: bool, console: Console) -> BenchResults:
    if quiet or not sys.stderr.isatty():
        return await coro  # type: ignore[no-any-return]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    task = asyncio.ensure_future(coro)
    ids: dict[float, Any] = {}
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=2,
        transient=True,
    ) as bar:
        while not task.done():
            for level, (done, total) in list(_Bar.state.items()):
                if level not in ids:
                    ids[level] = bar.add_task(f"level {level:g}", total=total)
                bar.update(ids[level], completed=done)
            await asyncio.wait({task}, timeout=0.5)
    return task.result()


def compare_command(files: list[str], report: Path | None) -> int:
    """Print runs side by side; write an HTML comparison with --report."""
    from edgecloud.bench.render import COMPARE_HEADERS, compare_rows, render_compare

    console = Console()
    runs = []
    for f in files:
        try:
            runs.append(read_results(f))
        except (OSError, ValueError) as exc:
            Console(stderr=True).print(f"[red]{f}: not a bench results file ({str(exc)[:200]})")
            return EXIT_TARGET
    table = Table(title="edgecloud bench compare (ms)")
    for h in COMPARE_HEADERS:
        table.add_column(h, justify="right")
    for row in compare_rows(runs):
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)
    if report:
        report.write_text(render_compare(runs), encoding="utf-8")
        console.print(f"report: {report}")
    return 0
