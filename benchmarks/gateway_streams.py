"""Many slow streams, the load an LLM gateway really carries: a stand-in streams 64 chunks 20 ms
apart (a 50 tokens/s model); 100 and 500 concurrent streams directly, through nginx, a bare
Python pass-through, `edgecloud gateway` and the LiteLLM proxy, in one run.

Per stream: time to first chunk (TTFT). Per chunk: the delay it gains over the upstream's pace
(arrival - first arrival - i x 20 ms). Also failed or cut streams, and the CPU time the
target's own processes used for the measured run (from /proc, children included). Streams start
spread evenly over one stream's length (so N are in flight at once, as in steady service);
--burst starts all N at the same instant instead. Each target is warmed with one run of N
streams first. Writes benchmarks/results/gateway_streams.json.

    python benchmarks/gateway_streams.py [--streams 100 500] [--burst] [--skip-litellm]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from benchmarks.gateway_peers import peers  # noqa: E402
from edgecloud.bench.sse import StreamScanner  # noqa: E402
from edgecloud.testing.figures import benchmark_parser, write_result  # noqa: E402

CHUNKS = 64
PACE_MS = 20.0
BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": CHUNKS,
                   "messages": [{"role": "user", "content": "Tell me a story."}]}).encode()


async def one_stream(session: aiohttp.ClientSession, url: str, delay_s: float,
                     body: bytes = BODY) -> tuple[float | None, list[float], bool]:
    """(ttft_ms, per-chunk delays in ms, complete) for one stream."""
    await asyncio.sleep(delay_s)
    start = time.perf_counter()
    scan = StreamScanner()
    try:
        async with session.post(url, data=body,
                                headers={"content-type": "application/json"}) as resp:
            if resp.status != 200:
                return None, [], False
            async for data in resp.content.iter_any():
                scan.feed(data, time.perf_counter())
    except (TimeoutError, aiohttp.ClientError):
        return None, [], False
    arrivals, done = scan.token_times, scan.done
    if not arrivals:
        return None, [], False
    first = arrivals[0]
    delays = [max(0.0, (t - first) * 1000 - i * PACE_MS) for i, t in enumerate(arrivals)]
    # LiteLLM re-chunks; a stream is whole when it ends with [DONE] after enough content.
    return (first - start) * 1000, delays, done and len(arrivals) >= CHUNKS


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


async def run(url: str, n: int, burst: bool, body: bytes = BODY,
              cpu_s: Callable[[], float | None] = lambda: None,
              samples: dict[str, object] | None = None) -> dict[str, float]:
    """N streams (after a warm-up of N); the figures, with `cpu_s()`'s growth over the measured
    round as "cpu_s". The raw TTFTs and chunk-delay percentiles go into `samples`."""
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    span_s = CHUNKS * PACE_MS / 1000
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        for warm in (True, False):  # the first round opens the connections on every hop
            cpu0 = cpu_s()
            results = await asyncio.gather(*(
                one_stream(session, url + "/v1/chat/completions",
                           0.0 if burst else i * span_s / n, body) for i in range(n)))
            cpu1 = cpu_s()
            if warm:
                await asyncio.sleep(0.2)
    ttfts = [r[0] for r in results if r[0] is not None]
    delays = [d for r in results for d in r[1]]
    if samples is not None:
        samples.update({"ttft_ms": [round(t, 3) for t in ttfts],
                        "chunk_delay_ms_percentiles_0_to_100": [
                            round(pct(delays, q), 3) for q in range(101)]})
    return {"streams": n, "ok": sum(1 for r in results if r[2]),
            "ttft_p50_ms": pct(ttfts, 50), "ttft_p99_ms": pct(ttfts, 99),
            "chunk_delay_p50_ms": pct(delays, 50), "chunk_delay_p99_ms": pct(delays, 99),
            "cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else float("nan")}


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--streams", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--burst", action="store_true", help="start all streams at once")
    ap.add_argument("--skip-litellm", action="store_true")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out: dict[str, list[dict[str, float]]] = {}
    raw: dict[str, dict[str, object]] = {}
    with peers("gw-streams-") as p:
        up = p.upstream(CHUNKS, PACE_MS)
        targets = {"direct": up, "nginx": p.nginx(up), "bare-python": p.bare(up),
                   "edgecloud": p.gateway(up)}
        if not args.skip_litellm:
            targets["litellm"] = p.litellm(up)
        print(f"{'target':<12} {'streams':>7} {'ok':>5} {'TTFT p50':>9} {'TTFT p99':>9} "
              f"{'delay p50':>9} {'delay p99':>9}   (ms)  {'CPU s':>6}")
        for n in args.streams:
            for name, url in targets.items():
                raw[f"{name}/{n}"] = samples = {}
                r = asyncio.run(run(url, n, args.burst, cpu_s=lambda u=url: p.cpu_s(u),
                                    samples=samples))
                out.setdefault(name, []).append(r)
                print(f"{name:<12} {n:>7} {r['ok']:>5.0f} {r['ttft_p50_ms']:>9.1f} "
                      f"{r['ttft_p99_ms']:>9.1f} {r['chunk_delay_p50_ms']:>9.1f} "
                      f"{r['chunk_delay_p99_ms']:>9.1f}        {r['cpu_s']:>6.2f}", flush=True)
    print("\nedgecloud vs direct")
    for i, n in enumerate(args.streams):
        d, g = out["direct"][i], out["edgecloud"][i]
        print(f"  {n} streams: TTFT p50 +{g['ttft_p50_ms'] - d['ttft_p50_ms']:.1f} ms, "
              f"chunk delay p99 {g['chunk_delay_p99_ms']:.1f} ms, TTFT p99 "
              f"{g['ttft_p99_ms']:.0f} ms, failed or cut {n - g['ok']:.0f}, gateway CPU "
              f"{g['cpu_s']:.2f} s")
    write_result("gateway_streams", summary={"runs": out}, samples=raw, params=vars(args))


if __name__ == "__main__":
    main()
