"""What tracing costs the gateway per request: off, on but sampled out, on and exported.

The gateway app is driven in-process through its ASGI callable (no HTTP server in front), against
a stand-in provider process over loopback; spans go to the stand-in OTLP collector. It reports
the gateway process's CPU time per request (the exporter thread included) and wall time per
request, rounds of each mode interleaved so that machine drift hits them alike.

    python benchmarks/gateway_tracing_overhead.py [--requests 3000] [--rounds 5] [--modes off,...]

Run it once with PYTHONPATH at a tree from before tracing (modes: off) for the "before" figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after PYTHONPATH, so a "before" tree can be measured

BODY = (
    b'{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"system","content":'
    b'"You are a helpful assistant."},{"role":"user","content":'
    b'"Write one sentence about the sea."}]}'
)
MODES = ("off", "sampled_out", "on")


def _config(mode: str, upstream: str, collector: str) -> Any:
    from edgecloud.gateway.config import parse_config

    text = f"endpoints:\n  - {{name: cloud, tier: cloud, url: '{upstream}', region: eu}}\n"
    if mode != "off":
        ratio = 0.0 if mode == "sampled_out" else 1.0
        text += f"tracing: {{enabled: true, sample_ratio: {ratio}, endpoint: '{collector}'}}\n"
    return parse_config(text)


async def _run(mode: str, upstream: str, collector: str, n: int) -> tuple[float, float]:
    from edgecloud.gateway.app import GatewayApp
    from edgecloud.logs import AccessLog
    from edgecloud.testing.asgi_once import asgi_status, post_scope

    with open(os.devnull, "wb") as devnull:
        app = GatewayApp(_config(mode, upstream, collector),
                         log=AccessLog("edgecloud.gateway", devnull))
        await app.start()
        scope = post_scope("/v1/chat/completions")
        for _ in range(200):  # warm the pool and the code
            await asgi_status(app, scope, BODY)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            assert await asgi_status(app, scope, BODY) == 200
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await app.stop()  # flushes spans; not timed
    return cpu / n * 1e6, wall / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]

    from edgecloud.supervise import ManagedProcess, free_port
    from edgecloud.testing.figures import write_result

    up_port, col_port = free_port(), free_port()
    upstream = ManagedProcess(
        [sys.executable, "-m", "edgecloud.testing.standin_provider", "--port", str(up_port)],
        f"http://127.0.0.1:{up_port}/healthz",
        name="standin",
    )
    collector = ManagedProcess(
        [
            sys.executable,
            str(ROOT / "tests/gateway/standin_otlp_collector.py"),
            "--port",
            str(col_port),
        ],
        f"http://127.0.0.1:{col_port}/healthz",
        name="collector",
    )
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with upstream, collector:
        up, col = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{col_port}"
        for _ in range(args.rounds):
            for mode in modes:
                results[mode].append(asyncio.run(_run(mode, up, col, args.requests)))
    print(f"{'mode':<12} {'cpu us/req (median of rounds)':>30} {'wall us/req':>12}")
    base = statistics.median(c for c, _ in results[modes[0]])
    summary = {}
    for mode in modes:
        cpu = statistics.median(c for c, _ in results[mode])
        wall = statistics.median(w for _, w in results[mode])
        summary[mode] = {"cpu_us": cpu, "wall_us": wall, "cpu_vs_first": cpu / base}
        print(f"{mode:<12} {cpu:>22.1f} ({cpu / base:4.2f}x) {wall:>12.1f}")
    write_result("gateway_tracing_overhead", summary=summary,
                 samples={"cpu_wall_us_per_round": results}, params=vars(args))


if __name__ == "__main__":
    main()
