"""The README's performance tables, one renderer per benchmark: a result document in (see
`figures.py`), Markdown out. Pure; `benchmarks/bench_report.py` writes them into the README."""

from __future__ import annotations

import math
import statistics
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


def _met(ok: bool, text: str) -> str:
    """A measured figure, bold where it meets its target and marked where it does not."""
    return f"**{text}**" if ok else f"{text} (not met)"


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
    # (ratio, what it is, the least it must be: None for a figure without a target)
    targets = [("small c16: edgecloud / nginx (req/s)", "≥ 0.25x nginx", 0.25),
               ("small c16: edgecloud / litellm (req/s)", "≥ 50x LiteLLM", 50.0),
               ("small c16: edgecloud / bare-python (req/s)", "(bare pass-through)", None),
               ("2MB c16: edgecloud / nginx (req/s)", "(2 MB body, nginx)", None)]
    rrows = [[t, f"{ratios[k]:.2f}x" if least is None
              else _met(ratios[k] >= least, f"{ratios[k]:.2f}x")]
             for k, t, least in targets if k in ratios]
    p50 = ratios.get("small c1: edgecloud added p50 (ms)")
    rrows.append(["added p50 ≤ 0.5 ms", "–" if p50 is None
                  else _met(p50 <= 0.5, num(p50, 2, " ms"))])
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
    runs = "median of runs" if doc.get("params", {}).get("cpu_rounds") else "lower of 2 runs"
    rows = [["TTFT p50 (mean of rounds)", num(s["ttft_p50_ms"]["public"], 2, " ms"),
             num(s["ttft_p50_ms"]["private"], 2, " ms"),
             _met(s["ttft_p50_diff_ms"] <= 1, f"{s['ttft_p50_diff_ms']:+.2f} ms"), "≤ +1 ms"],
            ["chunk delay p99 (mean of rounds)", num(s["delay_p99_ms"]["public"], 2, " ms"),
             num(s["delay_p99_ms"]["private"], 2, " ms"),
             _met(s["delay_p99_diff_ms"] <= 1, f"{s['delay_p99_diff_ms']:+.2f} ms"), "≤ +1 ms"],
            [f"gateway CPU per small request ({runs})", num(s["cpu_us"]["public"], 0, " µs"),
             num(s["cpu_us"]["private"], 0, " µs"),
             _met(s["cpu_ratio"] <= 1.3, f"{s['cpu_ratio']:.2f}x"), "≤ 1.3x"]]
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


# -- over-the-air updates, the bench against AIPerf, the soak ---------------------------------


def _link_order(key: str) -> float:
    """Emulated links by speed, loopback (`download`) last."""
    if not key.startswith("download_link_"):
        return math.inf
    return float(key.removeprefix("download_link_").removesuffix("MBps"))


def ota_update(doc: Doc) -> str:
    """Per link: a plain download, the agent's verify + stage and verify + activate (medians)."""
    s = doc["summary"]
    rows = []
    for key in sorted((k for k in s if k.startswith("download")), key=_link_order):
        v = s[key]
        link = f"emulated {v['link']}" if key != "download" else "loopback (same cores)"
        rows.append([link, num(v["plain_download_s"], 2, " s"),
                     num(v["agent_refresh_download_verify_stage_s"], 2, " s"),
                     f"{v['stage_ratio_vs_plain']:.2f}x",
                     num(v["agent_update_with_activation_s"], 2, " s"),
                     f"**{v['update_ratio_vs_plain']:.2f}x**" if v["update_ratio_vs_plain"] <= 1.2
                     else f"{v['update_ratio_vs_plain']:.2f}x (not met)"])
    out = []
    if rows:
        out.append(md_table(["link", "plain download", "verify + stage", "ratio",
                             "verify + activate", "ratio (target ≤ 1.2x)"], rows))
    if "rollout" in s:
        r = s["rollout"]
        out.append(f"Publish to 100% of a {r['agents']}-box fleet: "
                   f"{num(r['publish_to_100pct_s'], 1, ' s')} (the release ends "
                   f"{r['final_stage']}); each agent's activation "
                   + ", ".join(num(x, 1, " s") for x in r["agent_activate_s"]) + ".")
    if "poll" in s:
        p = s["poll"]
        out.append(f"The fleet server held {num(p['held_req_s'], 0)} of "
                   f"{num(p['offered_req_s'], 0)} req/s offered by "
                   f"{num(p['simulated_agents'], 0)} simulated agents polling every second, "
                   f"{p['server_cpu_cores']} of a core, p50 {num(p['p50_ms'], 0, ' ms')} and p99 "
                   f"{num(p['p99_ms'], 0, ' ms')}, {p['errors']} errors.")
    return "\n\n".join(out)


_AIPERF_KEYS = (("output_tok_s", "output tokens/s"), ("e2e_p50_ms", "e2e p50"),
                ("ttft_p50_ms", "TTFT p50"))


def _off_by(fig: dict[str, float], truth: dict[str, float], key: str) -> float:
    return 100 * (fig[key] - truth[key]) / truth[key] if truth.get(key) else math.nan


def bench_vs_aiperf(doc: Doc) -> str:
    """Per tool (medians over its runs): its own CPU, and how far its figures are from the
    node's own counters."""
    by_tool: dict[str, list[dict[str, Any]]] = {}
    for run in doc["summary"]["runs"]:
        by_tool.setdefault(run["tool"], []).append(run)
    rows = []
    for tool, runs in by_tool.items():
        cells = [f"`{tool}` ({len(runs)} run{'s' if len(runs) > 1 else ''})",
                 num(100 * statistics.median(r["tool_cpu_share"] for r in runs), 1, "%")]
        for key, _ in _AIPERF_KEYS:
            off = statistics.median(_off_by(r["tool_figures"], r["node_truth"], key)
                                    for r in runs)
            cells.append("–" if math.isnan(off) else f"{off:+.1f}%")
        rows.append(cells)
    head = ["tool", "its CPU (of one core; target ≤ 10%)",
            *(f"{label} vs the node's counters" for _, label in _AIPERF_KEYS)]
    return md_table(head, rows)


def chaos_soak(doc: Doc) -> str:
    """Steady mixed load: each part's memory, open files and event-loop tasks, first vs last."""
    s = doc["summary"]
    rows = [[name, num(p["rss_mb"][0]), num(p["rss_mb"][1]),
             "–" if p["rss_growth_pct"] is None else f"{p['rss_growth_pct']:+.1f}%",
             f"{p['fds'][0]} → {p['fds'][1]}",
             "–" if p["tasks"][0] is None else f"{p['tasks'][0]} → {p['tasks'][1]}"]
            for name, p in s["parts"].items()]
    head = (f"{s['minutes']:g} minutes: {num(s['requests'], 0)} requests, "
            f"{num(s['served'], 0)} served (the rest refused as the policy says), "
            f"{s['failed']} failed, {len(s['leaks'])} leaks, stuck after it: "
            f"{', '.join(s['stuck_after']) if s['stuck_after'] else 'nothing'}.")
    return head + "\n\n" + md_table(["part", "RSS MB first", "RSS MB last",
                                      "growth (target < 5%)", "open files", "asyncio tasks"],
                                     rows)


def _errors(errors: dict[str, int]) -> int:
    return sum(errors.values())


def fleet_scale(doc: Doc) -> str:
    """Simulated devices against the stateless API processes over PostgreSQL (and today's
    single server on the same load when it ran), then the rollout under that load."""
    r, s = doc["summary"], doc["summary"]["steady"]
    b = r.get("baseline")
    seconds = doc.get("params", {}).get("steady_s")
    title = (f"{num(r['devices'], 0)} devices, {r['polls_per_s']:g} polls/s"
             + (f", {seconds:g} s" if seconds else ""))
    rows = [["reports, errors", f"{num(s['reports_ok'], 0)}, **{_errors(s['errors'])}**",
             f"{num(b['reports_ok'], 0)}, {_errors(b['errors'])}" if b else "–"],
            [f"API CPU per report (marginal; idle {r['api_idle_cores']:g} cores)",
             f"{s['api_cpu_ms_per_report']:.2f} ms ({s['api_marginal_cpu_ms_per_report']:.2f} ms)",
             f"{b['api_cpu_ms_per_report']:.2f} ms ({b['api_marginal_cpu_ms_per_report']:.2f} "
             f"ms): **{r['ratio_cpu_per_report_new_over_baseline']:.2f}x**" if b else "–"],
            ["PostgreSQL CPU per report", f"{s['pg_cpu_ms_per_report']:.2f} ms",
             "(written behind, in batches)" if b else "–"],
            ["report p50 / p99", f"{s['report_ms']['p50']} / **{s['report_ms']['p99']} ms**",
             f"{b['report_ms']['p50']} / {b['report_ms']['p99']} ms" if b else "–"],
            ["poll (CDN `timestamp.json`) p50 / p99",
             f"{s['poll_ms']['p50']} / {s['poll_ms']['p99']} ms", "–"]]
    out = [md_table([title, "the API processes (stateless)", "today's single server"], rows)]
    proj = r.get("projected_cores", {})
    if proj:
        out.append("Projected from the measured cost (idle + marginal per report × devices / "
                   "interval): " + "; ".join(
                       f"**{v['api_cores']:g} API cores + {v['postgres_cores']:g} PostgreSQL "
                       f"cores for {num(int(n), 0)} devices**" for n, v in proj.items()) + ".")
    if "rollout" in r:
        ro = r["rollout"]
        killed = ro.get("killed")
        # by stage (a result from before the script sorted them lists them per process)
        ordered = sorted(ro["steps"], key=lambda st: (st[1], st[0] == "complete"))
        steps = ", ".join(f"`{action} {pct:g}`" for action, pct in ordered)
        cdn = ro["cdn_bytes_served"]
        tuf = ro["api_tuf_requests"]
        out.append(
            f"Rollout under the same load: {ro['final']['stage']} at {ro['final']['percent']:g}% "
            f"in {ro['seconds']:g} s; steps {steps}"
            + (f"; {killed['name']} SIGKILLed at {killed['at_percent']:g}%" if killed else "")
            + f"; {num(ro['reports_ok'], 0)} reports, {_errors(ro['errors'])} errors "
            f"({num(ro['failovers'], 0)} failed over), "
            f"**{ro['acknowledged_reports_missing_in_db']} acknowledged reports missing** from "
            f"the database. The API served {num(ro['api_bytes_served'], 0)} bytes "
            f"({tuf['metadata'] + tuf['targets']} TUF requests); the CDN "
            f"{cdn['targets'] / 1e6:.1f} MB of models and {cdn['metadata'] / 1e6:.1f} MB of "
            f"metadata ({num(ro['cdn_cache_hits'], 0)} of {num(ro['cdn_requests'], 0)} requests "
            "from its cache).")
    return "\n\n".join(out)


def gateway_state(doc: Doc) -> str:
    """Shared limits on Redis: correctness across 3 replicas (ours, then LiteLLM's), the cost
    of Redis against memory, `--workers 2` against nginx, and the LiteLLM ratio."""
    res = doc["summary"]
    rows: list[list[str]] = []
    a = res.get("correctness")
    if a:
        m = a["rpm60"]
        rows.append([f"3 gateway processes on one Redis, a key with `rpm: 60`, 3 clients spread "
                     f"over them for {m['window_s']:.0f} s ({m['attempts']:,} tries)",
                     f"**{m['answered_first_60s']}** answers in the first 60 s, "
                     f"**{m['most_in_any_60s']}** at most in any 60 s, {m['errors']} errors "
                     "other than 429", "60 ± 2 per minute"])
        for key, what in (("cap_capped", "a key's `monthly_cloud_usd`"),
                          ("cap_free", "the global `budget: {hard: true}`")):
            c = a[key]
            rows.append([f"the same 3 gateways, {what} of {c['cap_usd']} USD, 12 clients at once",
                         f"spent **{c['spent_usd']:.3f}** USD ({c['answered']} answered), then "
                         f"429 ({c['refused_429']:,}); {c['other']} other",
                         "never above the cap"])
    b = res.get("cost")
    if b:
        mem, red = b["memory/c16"], b["redis/c16"]
        r = b["rps_ratio_c16"]
        rows.append(["one gateway, a key with every limit and a hard budget: redis / memory, "
                     "req/s at concurrency 16",
                     f"{num(red['rps'], 0)} / {num(mem['rps'], 0)} = "
                     + _met(r >= 0.8, f"{r:.2f}x"), "≥ 0.8x"])
        added = b["added_p50_ms_c1"]
        rows.append(["the same, added p50 at concurrency 1",
                     f"{b['redis/c1']['p50_ms']:.3f} − {b['memory/c1']['p50_ms']:.3f} = "
                     + _met(added <= 0.3, f"{added:+.3f} ms")
                     + f" (one Redis PING here: {b['redis_ping_p50_ms']:.2f} ms)", "≤ +0.3 ms"])
        if "gateway_cpu_us_per_request" in red:
            rows.append(["the same, CPU per request at concurrency 16: gateway (memory → redis), "
                         "redis-server",
                         f"{mem['gateway_cpu_us_per_request']:.0f} → "
                         f"{red['gateway_cpu_us_per_request']:.0f} µs, "
                         f"{red['redis_cpu_us_per_request']:.0f} µs", "–"])
    e = res.get("vs_litellm")
    if e:
        for label, ratio_key, what in (
                ("edgecloud_redis", "ratio", "a key with every limit"),
                ("edgecloud_redis_budget", "ratio_budget", "a key with no limits")):
            if label not in e:
                continue
            rows.append([f"the gateway on Redis ({what}, the hard global budget) / one LiteLLM "
                         "proxy with no limits, req/s at concurrency 16",
                         f"{num(e[label]['rps'], 0)} / {num(e['litellm']['rps'], 0)} = "
                         + _met(e[ratio_key] >= 50, f"{e[ratio_key]:.0f}x"), "≥ 50x"])
    c = res.get("workers")
    if c:
        w2 = c["w2_vs_nginx2"]
        rows.append(["`--workers 2` / nginx with 2 workers, small body, concurrency 16",
                     f"{num(c['edgecloud-w2']['rps'], 0)} / {num(c['nginx-2']['rps'], 0)} = "
                     + _met(w2 >= 0.35, f"{w2:.2f}x")
                     + f" (one process: {num(c['edgecloud-1']['rps'], 0)}, "
                     f"{c['w1_vs_nginx2']:.2f}x)", "≥ 0.35x"])
    d = res.get("litellm")
    if d:
        rows.append([f"the rpm 60 run against 3 LiteLLM proxies on the same Redis (deployment "
                     f"`rpm: 60`, `usage-based-routing-v2`) for {d['window_s']:.0f} s",
                     f"**{d['answered_first_60s']}** answers in the first 60 s, "
                     f"{d['most_in_any_60s']} at most in any 60 s; {d['timed_out_10s']} of "
                     f"{d['attempts']} got no answer within 10 s", "–"])
    return md_table(["what", "measured", "target"], rows)


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
    "ota_update": ota_update,
    "bench_vs_aiperf": bench_vs_aiperf,
    "chaos_soak": chaos_soak,
    "fleet_scale": fleet_scale,
    "gateway_state": gateway_state,
}


def render(doc: Doc) -> str:
    """A benchmark's README block: its table, then where the figures came from."""
    return RENDERERS[doc["benchmark"]](doc) + "\n\n" + provenance(doc) + "\n"


def render_all(docs: dict[str, Doc]) -> dict[str, str]:
    return {name: render(doc) for name, doc in docs.items() if name in RENDERERS}
