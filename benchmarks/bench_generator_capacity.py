"""How hard can `edgecloud bench` push? Side by side with wrk against one fast stand-in.

Runs, in one go: a fast OpenAI stand-in (uvicorn + uvloop + httptools,
edgecloud/testing/standin_openai.py); wrk (1 thread) with the same chat body and connections;
`edgecloud bench` closed loop with the same connections; then `edgecloud bench` open loop at
1,000 req/s, where every send should leave within 1 ms of its schedule. Prints the figures
and the ratio.

    python benchmarks/bench_generator_capacity.py [--connections 16] [--seconds 10]

Targets (issue 10): at least 0.3x wrk's requests/s; open-loop send lag p99 within 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgecloud.bench.results import BenchResults  # noqa: E402
from edgecloud.supervise import ManagedProcess, free_port  # noqa: E402
from edgecloud.testing.figures import sample_digest, write_result  # noqa: E402

BODY = {
    "model": "standin-model",
    "messages": [{"role": "user", "content": "Say hi."}],
    "max_tokens": 4,
    "stream": False,
}


def run_wrk(url: str, connections: int, seconds: int) -> float | None:
    if shutil.which("wrk") is None:
        print("wrk not found (apt-get install -y wrk): skipping the wrk side")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
        )
        script = f.name
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "-s",
                script,
                url + "/v1/chat/completions",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"warning: wrk saw {non2xx.group(1)} non-2xx answers")
    return float(m.group(1)) if m else None


def run_bench(url: str, args: list[str], out: Path) -> BenchResults:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecloud",
            "bench",
            url,
            "--no-stream",
            "--quiet",
            "--max-tokens",
            "4",
            "--out",
            str(out),
            *args,
        ],
        check=True,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return BenchResults.model_validate_json(out.read_text())


def timer_floor(rate: float, seconds: float) -> list[float]:
    """|wake - schedule| (ms) of a bare uvloop loop that only sleeps to a Poisson schedule, no
    I/O: how precise the usual way (asyncio.sleep to each send time) is on this machine now."""
    import asyncio

    import uvloop

    from edgecloud.bench.schedule import poisson_schedule

    async def run() -> list[float]:
        lags = []
        start = time.perf_counter() + 0.01
        for off in poisson_schedule(rate, duration_s=seconds, seed=1):
            when = start + off
            delay = when - time.perf_counter() - 0.0004
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(abs(time.perf_counter() - when) * 1000)
        return sorted(lags)

    return uvloop.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=float, default=1000.0)
    a = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"PYTHONPATH": str(REPO)}
    standin = ManagedProcess(
        [sys.executable, "-m", "edgecloud.testing.standin_openai", "--port", str(port),
         "--tokens", "4"],
        f"{url}/healthz",
        env=env,
        name="standin",
    )
    with standin, tempfile.TemporaryDirectory() as tmp:
        wrk = run_wrk(url, a.connections, a.seconds)
        closed = run_bench(
            url,
            ["--concurrency", str(a.connections), "--duration", str(a.seconds)],
            Path(tmp) / "closed.json",
        )
        floor_before = timer_floor(a.rate, 3)
        opened = run_bench(
            url,
            ["--scenario", "rate", "--rate", str(a.rate), "--duration", str(min(a.seconds, 5))],
            Path(tmp) / "open.json",
        )
        floor_after = timer_floor(a.rate, 3)
    c = closed.levels[0]
    o = opened.levels[0]
    lags = sorted(abs(r.start_s - (r.scheduled_s or r.start_s)) * 1000 for r in opened.records)
    p99 = lags[int(0.99 * (len(lags) - 1))] if lags else float("nan")
    print(f"\nfast stand-in, {a.connections} connections, {a.seconds} s, one chat body")
    if wrk is not None:
        print(f"  wrk (1 thread)             {wrk:10,.0f} req/s")
    cpu = 100 * (c.client_cpu_share or 0)
    print(
        f"  edgecloud bench (closed)   {c.requests_per_s:10,.0f} req/s  "
        f"({c.errors or 'no'} errors, bench CPU {cpu:.0f}% of a core)"
    )
    if wrk:
        ratio = c.requests_per_s / wrk
        print(
            f"  ratio bench / wrk          {ratio:10.2f}x   (target >= 0.30x: "
            f"{'met' if ratio >= 0.3 else 'NOT met'})"
        )
    print(
        f"open loop at {a.rate:g} req/s for {min(a.seconds, 5)} s: {o.requests} sent, "
        f"{o.ok} ok, achieved {o.requests_per_s:,.0f} req/s"
    )
    print(
        f"  |send time - schedule| p50 {lags[len(lags) // 2]:.3f} ms, p99 {p99:.3f} ms, "
        f"max {lags[-1]:.3f} ms  (target p99 <= 1 ms: {'met' if p99 <= 1.0 else 'NOT met'})"
    )
    for name, floor in (("before", floor_before), ("after", floor_after)):
        print(
            f"  for comparison ({name}), a bare uvloop loop sleeping to the same schedule: p50 "
            f"{floor[len(floor) // 2]:.3f} ms, p99 {floor[int(0.99 * (len(floor) - 1))]:.3f} ms"
        )
    floors = sorted(floor_before + floor_after)
    summary = {
        "bench_rps": c.requests_per_s,
        "wrk_rps": wrk,
        "bench_cpu_pct": cpu,
        "rate": a.rate,
        "lag_p99_ms": p99,
        "floor_p99_ms": floors[int(0.99 * (len(floors) - 1))] if floors else None,
    }
    samples = {
        "open_loop_send_lag_ms": sample_digest([round(x, 4) for x in lags]),
        "bare_loop_lag_ms": sample_digest([round(x, 4) for x in floors]),
    }
    write_result("bench_generator_capacity", summary=summary, samples=samples, params=vars(a))


if __name__ == "__main__":
    main()
