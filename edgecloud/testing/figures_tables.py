"""The README's performance tables, one renderer per benchmark: a result document in (see
`figures.py`), Markdown out. Pure; `benchmarks/bench_report.py` writes them into the README."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from edgecloud.testing.figures import provenance

Doc = dict[str, Any]


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def num(x: float | None, digits: int = 1, unit: str = "") -> str:
    """`1,234.5 ms`; a dash for a missing or NaN value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}{unit}"


def ratio(ours: float | None, peer: float | None) -> str:
    if not ours or not peer or math.isnan(ours) or math.isnan(peer):
        return "–"
    return f"{ours / peer:.2f}x"


# -- side by side with a peer (benchmarks/interleave.py: node, grammar, vision) ----------------

_METRIC_NAMES = {
    "req_s": ("requests/s", 2, ""),
    "tok_s": ("output tokens/s", 1, ""),
    "ttft_p50_ms": ("TTFT p50", 0, " ms"),
    "ttft_p95_ms": ("TTFT p95", 0, " ms"),
    "tpot_ms": ("time per output token", 1, " ms"),
    "out_tokens": ("output tokens per request", 1, ""),
    "prompt_tokens": ("prompt tokens", 0, ""),
}


def side_by_side(doc: Doc, peer_label: str | None = None) -> str:
    """`summary`: {"peer": NAME, "keys": [...], "medians": {NAME: {level: {key: value}}}}; the
    peer's column is headed `peer_label` (else its name)."""
    s = doc["summary"]
    peer, ours = s["peer"], s.get("ours", "edgecloud")
    rows = []
    for level in s["medians"][ours]:  # in the order measured
        for key in s["keys"]:
            label, digits, unit = _METRIC_NAMES.get(key, (key, 2, ""))
            p = s["medians"][peer][level][key]
            o = s["medians"][ours][level][key]
            rows.append([str(level), label, num(p, digits, unit), num(o, digits, unit),
                         ratio(o, p)])
    head = ["level" if any(not str(k).isdigit() for k in s["medians"][ours]) else "concurrency",
            "metric", f"`{peer_label or peer}`", f"`{ours}`", "ratio"]
    return md_table(head, rows)


# -- the gateway ---------------------------------------------------------------------------------

_GATEWAY_PATHS = (("direct", "direct to the stand-in"), ("nginx", "nginx reverse proxy"),
                  ("bare-python", "bare Python pass-through (uvicorn + aiohttp, no policy)"),
                  ("edgecloud", "**edgecloud gateway** (full policy chain, metrics, JSON log)"),
                  ("litellm", "LiteLLM proxy"))


def gateway_overhead(doc: Doc) -> str:
    res = doc["summary"]["results"]
    rows = []
    for name, label in _GATEWAY_PATHS:
        if name not in res:
            continue
        cells = [label]
        for body in ("small", "2MB"):
            cells.append(num(res[name][f"{body}/c16"]["rps"], 0))
            added = res[name][f"{body}/c1"]["p50_ms"] - res["direct"][f"{body}/c1"]["p50_ms"]
            cells.append("–" if name == "direct" else num(added, 2, " ms"))
        rows.append(cells)
    head = ["path", "small body req/s at c16", "added p50 at c1", "2 MB body req/s at c16",
            "added p50 at c1"]
    ratios = doc["summary"]["ratios"]
    targets = [("small c16: edgecloud / nginx (req/s)", "≥ 0.25x nginx"),
               ("small c16: edgecloud / litellm (req/s)", "≥ 50x LiteLLM"),
               ("small c16: edgecloud / bare-python (req/s)", "(bare pass-through)"),
               ("2MB c16: edgecloud / nginx (req/s)", "(2 MB body, nginx)")]
    rrows = [[t, f"**{ratios[k]:.2f}x**"] for k, t in targets if k in ratios]
    p50 = ratios.get("small c1: edgecloud added p50 (ms)")
    rrows.append(["added p50 ≤ 0.5 ms", f"**{num(p50, 2, ' ms')}**"])
    privacy = doc["summary"].get("privacy_us", {})
    lines = [md_table(head, rows), "", md_table(["target", "measured"], rrows)]
    if privacy:
        lines += ["", "Privacy detection alone, µs per request: " + ", ".join(
            f"{k.replace('_', ' ')} {v:.1f}" for k, v in privacy.items()) + "."]
    return "\n".join(lines)


def gateway_streams(doc: Doc) -> str:
    s = doc["summary"]["runs"]
    names = [n for n in ("direct", "nginx", "bare-python", "edgecloud", "litellm") if n in s]
    rows = []
    for i, direct in enumerate(s["direct"]):
        for name in names:
            r, d = s[name][i], direct
            over = "–" if name == "direct" else f"{r['ttft_p50_ms'] - d['ttft_p50_ms']:+,.1f} ms"
            rows.append([f"`{name}`" if name != "edgecloud" else "**edgecloud gateway**",
                         str(r["streams"]), over, num(r["ttft_p99_ms"], 1, " ms"),
                         num(r["chunk_delay_p99_ms"], 1, " ms"),
                         str(int(r["streams"] - r["ok"])), num(r.get("cpu_s"), 2, " s")])
    head = ["target", "streams", "time to first chunk p50 over direct", "TTFT p99",
            "chunk delay p99", "failed or cut", "CPU of the target's processes"]
    return md_table(head, rows) + ("\n\n(targets at 100 streams: ≤ +2 ms to the first chunk, "
                                   "chunk delay p99 ≤ 5 ms; at 500: TTFT p99 < 500 ms, none cut)")


def gateway_pseudonymize(doc: Doc) -> str:
    s = doc["summary"]
    rows = [["TTFT p50 (mean of rounds)", num(s["ttft_p50_ms"]["public"], 2, " ms"),
             num(s["ttft_p50_ms"]["private"], 2, " ms"), f"**{s['ttft_p50_diff_ms']:+.2f} ms**",
             "≤ +1 ms"],
            ["chunk delay p99 (mean of rounds)", num(s["delay_p99_ms"]["public"], 2, " ms"),
             num(s["delay_p99_ms"]["private"], 2, " ms"),
             f"**{s['delay_p99_diff_ms']:+.2f} ms**", "≤ +1 ms"],
            ["gateway CPU per small request", num(s["cpu_us"]["public"], 0, " µs"),
             num(s["cpu_us"]["private"], 0, " µs"), f"**{s['cpu_ratio']:.2f}x**", "≤ 1.3x"]]
    return md_table(["measure", "public", "private (surrogates)", "difference", "target"], rows)


def gateway_confidential(doc: Doc) -> str:
    s = doc["summary"]
    best, r = s["best_runs"], s["ratios"]
    rows = [["requests/s at concurrency 16 (best of two runs)", num(best["plain"]["c16"]["rps"], 0),
             num(best["attested"]["c16"]["rps"], 0),
             f"**{r['c16 req/s attested / plain']:.3f}x**", "≥ 0.95x"],
            ["p50 at concurrency 1", num(best["plain"]["c1"]["p50_ms"], 3, " ms"),
             num(best["attested"]["c1"]["p50_ms"], 3, " ms"),
             f"**{r['c1 added p50 attested - plain (ms)']:+.3f} ms**", "≤ +0.1 ms"],
            ["time the gateway adds, median of its log",
             num(r["gateway-added median, plain (ms, its log)"], 3, " ms"),
             num(r["gateway-added median, attested (ms, its log)"], 3, " ms"),
             f"{r['gateway-added median attested - plain (ms)']:+.3f} ms", "–"]]
    return md_table(["measure", "plain cloud endpoint", "attested", "difference", "target"],
                    rows)


def gateway_tracing_overhead(doc: Doc) -> str:
    rows = [[f"`{mode}`", num(v["cpu_us"], 1, " µs"), f"{v['cpu_vs_first']:.2f}x",
             num(v["wall_us"], 1, " µs")] for mode, v in doc["summary"].items()]
    return md_table(["tracing", "gateway CPU per request (median of rounds)", "vs the first",
                     "wall time per request"], rows)


def autoscale_sim(doc: Doc) -> str:
    rows = doc["summary"]["rows"]
    cols = list(rows[0])
    return md_table(cols, [[str(r[c]) for c in cols] for r in rows])


def chaos(doc: Doc) -> str:
    text = doc["summary"]["table"]
    return "```\n" + text.rstrip("\n") + "\n```"


def bench_generator_capacity(doc: Doc) -> str:
    s = doc["summary"]
    rows = [["requests/s, closed loop, vs wrk against a fast stand-in",
             f"{num(s['bench_rps'], 0)} vs {num(s['wrk_rps'], 0)} = "
             f"**{ratio(s['bench_rps'], s['wrk_rps'])}**", "≥ 0.3x"],
            ["its own CPU in the closed loop", f"{num(s['bench_cpu_pct'], 0)}% of a core", "–"],
            [f"open-loop send lag at {s['rate']:g} req/s", f"p99 **{num(s['lag_p99_ms'], 2)} "
             f"ms** (a bare uvloop loop: p99 {num(s['floor_p99_ms'], 2)} ms)", "≤ 1 ms"]]
    return md_table(["what", "edgecloud bench", "target"], rows)


_GATEWAY_CASES = (("chat", "chat, whole"), ("responses", "Responses, whole"),
                  ("messages", "Messages, whole"), ("chat-stream", "chat, streamed (16 chunks)"),
                  ("responses-stream", "Responses, streamed"),
                  ("messages-stream", "Messages, streamed"), ("embeddings", "embeddings"))


def agent_apis(doc: Doc) -> str:
    """Three tables: the node per API, the gateway per API, embeddings (and the peer's)."""
    s = doc["summary"]
    out = []
    if "node" in s:
        rows = []
        for conc, v in s["node"].items():
            rows.append([conc, num(v["chat"]), num(v["responses"]),
                         f"**{ratio(v['responses'], v['chat'])}**", num(v["messages"]),
                         f"**{ratio(v['messages'], v['chat'])}**"])
        out.append(md_table(["concurrency", "chat tok/s per stream", "Responses", "ratio",
                             "Messages", "ratio"], rows))
    if "gateway" in s:
        g = s["gateway"]
        rows = []
        for key, label in _GATEWAY_CASES:
            ref = g["chat-stream" if key.endswith("-stream") else "chat"]
            v = g[key]
            over = key not in ("chat", "chat-stream")
            rows.append([label, num(v["wall_p50_ms"], 3),
                         f"{v['wall_p50_ms'] - ref['wall_p50_ms']:+.3f}" if over else "–",
                         num(v["added_p50_ms"], 3),
                         f"{v['added_p50_ms'] - ref['added_p50_ms']:+.3f}" if over else "–"])
        out.append(md_table(["gateway, ms per request (p50)", "wall", "over chat",
                             "gateway's own `added_ms`", "over chat"], rows))
    if "embeddings" in s:
        e = s["embeddings"]
        out.append(md_table(
            [f"embeddings/s (batches of {e['batch']})", "`llama-server`", "`edgecloud`", "ratio"],
            [["mean pooling, same model", num(e["llama-server"]), num(e["edgecloud"]),
              ratio(e["edgecloud"], e["llama-server"])]]))
    return "\n\n".join(out)


def portable_vs_native(doc: Doc) -> str:
    """The portable build (CPU variants chosen at run time) against a native one, per batch."""
    s = doc["summary"]
    variants = s.get("variants", {})
    rows = [[n, num(v["native"]), num(v["portable"]), f"**{ratio(v['portable'], v['native'])}**"]
            for n, v in s["medians"].items()]
    head = ["sequences decoded together",
            f"native tok/s ({variants.get('native', 'built in')})",
            f"portable tok/s ({variants.get('portable', '?')})", "portable/native"]
    return md_table(head, rows)


RENDERERS: dict[str, Callable[[Doc], str]] = {
    "portable_vs_native": portable_vs_native,
    "node_vs_llama_cpp_server": lambda doc: side_by_side(doc, "llama_cpp.server"),
    "grammar_vs_llama_server": side_by_side,
    "vision_vs_llama_server": side_by_side,
    "gateway_overhead": gateway_overhead,
    "gateway_streams": gateway_streams,
    "gateway_pseudonymize": gateway_pseudonymize,
    "gateway_confidential": gateway_confidential,
    "gateway_tracing_overhead": gateway_tracing_overhead,
    "autoscale_sim": autoscale_sim,
    "chaos": chaos,
    "bench_generator_capacity": bench_generator_capacity,
    "agent_apis": agent_apis,
}


def render(doc: Doc) -> str:
    """A benchmark's README block: its table, then where the figures came from."""
    return RENDERERS[doc["benchmark"]](doc) + "\n\n" + provenance(doc) + "\n"


def render_all(docs: dict[str, Doc]) -> dict[str, str]:
    return {name: render(doc) for name, doc in docs.items() if name in RENDERERS}
