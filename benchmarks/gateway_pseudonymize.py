"""What pseudonymisation costs: the same gateway, the same fast streaming stand-in, public
requests (passed through) against private ones sent to the cloud as surrogates, in one run.

The gateway's edge endpoint is down, so a private request with an e-mail address goes to the
cloud with `[EMAIL_1]` in its place, and every streamed chunk of the answer holds the surrogate
(the stand-in streams `--content "[EMAIL_1] "`: the worst case, each event parsed, restored and
written again); public requests get the same chunks untouched.

1. 100 concurrent streams of 64 chunks 20 ms apart (gateway_streams.py's measure), public and
   private runs in an order that swaps every round: TTFT and chunk delay. Targets: TTFT p50
   and chunk delay p99 at most 1 ms above the public stream.
2. Small non-streamed requests, 8 at a time, in --cpu-rounds rounds whose order swaps every
   round (public-private, private-public, ...): the gateway process's CPU time per request
   (the kernel's CPU clock of the process, to the nanosecond), the median of each side's runs.
   Target: a private request at most 1.3x a public one.

    python benchmarks/gateway_pseudonymize.py [--streams 100] [--rounds 2] [--requests 3000]
                                              [--cpu-rounds 6]
                                              [--content "tok "]  (chunks without a surrogate)

Writes benchmarks/results/gateway_pseudonymize.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import yaml  # noqa: E402

from benchmarks.gateway_peers import peers  # noqa: E402
from benchmarks.gateway_streams import CHUNKS, PACE_MS, run  # noqa: E402
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port  # noqa: E402
from edgecloud.testing.figures import benchmark_parser, write_result  # noqa: E402

PUBLIC = "Write one sentence to the customer about the delayed parcel, kindly."
PRIVATE = "Write one sentence to jane.doe@example.com about the delayed parcel."
LISTED = ["email", "phone", "id_card", "bank_card", "iban", "ip"]


def body(text: str, stream: bool) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "stream": stream,
                       "max_tokens": CHUNKS if stream else 16, "messages": [
                           {"role": "system", "content": "You are a helpful assistant."},
                           {"role": "user", "content": text}]}).encode()


def alternating(rounds: int) -> list[tuple[str, str]]:
    """Public and private runs, the order swapped every round (public first, then private
    first, ...), so neither side always runs on a warmer or a quieter machine."""
    pair = [("public", PUBLIC), ("private", PRIVATE)]
    return [run for r in range(rounds) for run in (pair if r % 2 == 0 else pair[::-1])]


def start_gateway(tmp: Path, upstream: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    cfg = {
        "endpoints": [
            {"name": "edge-box", "tier": "edge", "max_concurrency": 64,
             "url": f"http://127.0.0.1:{free_port()}/v1"},  # nothing listens: the edge is down
            {"name": "cloud", "tier": "cloud", "url": upstream + "/v1",
             "region": "eu-central-1", "price": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}},
        ],
        "policy": {"privacy": {"pseudonymize": LISTED}},
    }
    path = tmp / "gateway-pseudonymize.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    proc = ManagedProcess(edgecloud_command("gateway", "--config", str(path), "--port", str(port)),
                          f"http://127.0.0.1:{port}/readyz", log_path=str(tmp / "gateway.log"),
                          name="gateway", env={"PYTHONPATH": str(Path(__file__).parent.parent)})
    proc.start()
    proc.wait_ready(timeout_s=60)
    return proc, f"http://127.0.0.1:{port}"


async def cpu_per_request(url: str, cpu_s: Callable[[], float | None], payload: bytes, n: int,
                          concurrency: int = 8) -> tuple[float, str]:
    """Gateway CPU microseconds per request over `n` requests, and the reason it gave."""
    reasons: set[str] = set()
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker(count: int) -> None:
            for _ in range(count):
                async with session.post(url + "/v1/chat/completions", data=payload, headers={
                        "content-type": "application/json"}) as resp:
                    await resp.read()
                    reasons.add(f"{resp.status} {resp.headers.get('x-edgecloud-reason')}")

        await asyncio.gather(*(worker(200 // concurrency) for _ in range(concurrency)))  # warm
        c0 = cpu_s() or 0.0
        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
        used = (cpu_s() or 0.0) - c0
    return used / (n // concurrency * concurrency) * 1e6, ", ".join(sorted(reasons))


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2, help="public/private stream rounds")
    ap.add_argument("--requests", type=int, default=3000, help="per CPU measurement")
    ap.add_argument("--cpu-rounds", type=int, default=6, help="public/private CPU rounds")
    ap.add_argument("--content", default="[EMAIL_1] ", help="the text of every streamed chunk")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out: dict[str, list[dict[str, float]]] = {"public": [], "private": []}
    cpu_by: dict[str, list[float]] = {"public": [], "private": []}
    cpu_runs: list[dict[str, float | str]] = []
    raw: list[dict[str, object]] = []
    with peers("gw-pseudo-") as p:
        tmp = p.tmp
        up = p.upstream(CHUNKS, PACE_MS, content=args.content)
        gw, url = start_gateway(tmp, up)
        p.callback(gw.stop)
        p.pids[url] = gw.pid
        print(f"{'request':<8} {'streams':>7} {'ok':>5} {'TTFT p50':>9} {'TTFT p99':>9} "
              f"{'delay p50':>9} {'delay p99':>9}   (ms)")
        for name, text in alternating(args.rounds):
            samples: dict[str, object] = {"request": name}
            r = asyncio.run(run(url, args.streams, False, body(text, True), samples=samples))
            out[name].append(r)
            raw.append(samples)
            print(f"{name:<8} {args.streams:>7} {r['ok']:>5.0f} {r['ttft_p50_ms']:>9.2f} "
                  f"{r['ttft_p99_ms']:>9.2f} {r['chunk_delay_p50_ms']:>9.2f} "
                  f"{r['chunk_delay_p99_ms']:>9.2f}", flush=True)
        for name, text in alternating(args.cpu_rounds):
            us, reasons = asyncio.run(cpu_per_request(url, lambda: p.cpu_s(url),
                                                      body(text, False), args.requests))
            cpu_by[name].append(us)
            cpu_runs.append({"request": name, "cpu_us": us})
            print(f"CPU per small request, {name}: {us:.0f} us ({reasons})", flush=True)
        log = (tmp / "gateway.log").read_text(encoding="utf-8", errors="replace")
        assert "jane.doe" not in log, "an original value reached the gateway log"

    def mean(name: str, key: str) -> float:
        return sum(r[key] for r in out[name]) / len(out[name])

    ttft = mean("private", "ttft_p50_ms") - mean("public", "ttft_p50_ms")
    delay = mean("private", "chunk_delay_p99_ms") - mean("public", "chunk_delay_p99_ms")
    cpu = {name: statistics.median(runs) for name, runs in cpu_by.items()}
    ratio = cpu["private"] / cpu["public"]
    print(f"\nprivate (surrogates) vs public, {args.streams} streams, mean of {args.rounds} rounds:"
          f"\n  TTFT p50 {ttft:+.2f} ms (target <= +1), chunk delay p99 {delay:+.2f} ms "
          f"(target <= +1)\n  CPU per small request {cpu['private']:.1f} us vs "
          f"{cpu['public']:.1f} us = {ratio:.2f}x (target <= 1.3x; medians of "
          f"{args.cpu_rounds} runs each)")
    summary = {"ttft_p50_ms": {n: mean(n, "ttft_p50_ms") for n in out},
               "delay_p99_ms": {n: mean(n, "chunk_delay_p99_ms") for n in out},
               "ttft_p50_diff_ms": ttft, "delay_p99_diff_ms": delay, "cpu_us": cpu,
               "cpu_ratio": ratio, "stream_runs": out}
    write_result("gateway_pseudonymize", summary=summary,
                 samples={"streams": raw, "cpu_per_request": cpu_runs}, params=vars(args))


if __name__ == "__main__":
    main()
