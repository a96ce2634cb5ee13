"""Shared gateway state on a real redis-server, in one run:

(a) correctness across replicas: 3 gateway processes share one Redis; a key with rpm 60 is
    sent requests spread over them for --window seconds; then keys with spend caps (global hard
    budget, a key's monthly_cloud_usd) are driven past them at concurrency 12;
(b) cost: one gateway, a key with every limit and a hard budget (admit, reserve, settle and
    release per request), memory against redis: req/s at concurrency 16, p50 at concurrency 1,
    in 5 alternating rounds (the median round of each: single rounds here spread by +-10%);
(c) workers: `--workers 2` against nginx with 2 workers on the same stand-in upstream, small
    body at concurrency 16 (and one gateway process for reference), in 3 alternating rounds;
(d) the rpm 60 run of (a) against 3 LiteLLM proxy processes on the same Redis;
(e) req/s at concurrency 16: our gateway with Redis state (a key with every limit as in (b),
    and a key with none, under the hard global budget) against one LiteLLM proxy with no limits
    at all (run before (d), whose proxies would still be running).

    python benchmarks/gateway_state.py [--seconds 5] [--window 90] [--only a ...]

Every part by default (the README's table, benchmarks/results/gateway_state.json); `--only`
runs some (results/gateway_state_PARTS.json). LiteLLM runs from its own .venv-bench, made on
first use from benchmarks/requirements-bench.lock.

Needs redis-server, wrk and nginx (apt-get install -y redis-server wrk nginx-light). Figures on
a busy 2-core machine are noisy: wrk, the gateways, the upstream and Redis share the cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_peers import Peers, peers, wrk  # noqa: E402
from edgecloud.testing.figures import write_result  # noqa: E402
from edgecloud.testing.redis_server import RedisServer  # noqa: E402

SMALL = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write one sentence about the sea."}]}
KEYS = {"rpm60": "ec-bench-rpm60", "capped": "ec-bench-capped", "free": "ec-bench-free",
        "limited": "ec-bench-limited"}
# The stand-in cloud's price: a request of SMALL reserves (16 + 16) x 1000 / 1e6 = 0.032 USD
# and costs (16 + 1) x 1000 / 1e6 = 0.017 USD once settled (its answer has 1 token).
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}
KEY_CAP, GLOBAL_CAP = 0.5, 3.0


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _config(state: str, budget: float | None = None) -> dict[str, Any]:
    """Only a cloud endpoint: the caps decide between the cloud and a 429."""
    keys = [
        {"name": "rpm60", "sha256": _sha(KEYS["rpm60"]), "limits": {"rpm": 60}},
        {"name": "capped", "sha256": _sha(KEYS["capped"]),
         "limits": {"monthly_cloud_usd": KEY_CAP}},
        {"name": "free", "sha256": _sha(KEYS["free"])},
        {"name": "limited", "sha256": _sha(KEYS["limited"]),
         "limits": {"rpm": 10_000_000, "tpm": 1_000_000_000, "max_parallel": 1000,
                    "monthly_cloud_usd": 1e9}},
    ]
    return {"state": {"backend": state}, "auth": {"keys": keys},
            "policy": {"budget": {"monthly_cloud_usd": budget if budget is not None else 1e9,
                                  "hard": True}}}


def _cloud_only(p: Peers, up: str, state: str, env: dict[str, str], name: str,
                budget: float | None = None, args: tuple[str, ...] = ()) -> str:
    cfg = {"endpoints": [{"name": "cloud", "tier": "cloud", "url": up + "/v1",
                          "region": "eu-central-1", "capabilities": ["text"], "price": PRICE,
                          "max_concurrency": 64}], **_config(state, budget)}
    return p.gateway(up, cfg, args, env, name)


def _hammer(urls: list[str], key: str, clients: int, seconds: float, pause_s: float
            ) -> list[tuple[float, int]]:
    """(time, status) of every answer; clients take the gateways in turn. Bounded in time."""
    out: list[tuple[float, int]] = []
    lock = threading.Lock()
    t_end = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(timeout=10) as c:
            n = i
            while time.monotonic() < t_end:
                try:
                    status = c.post(urls[n % len(urls)] + "/v1/chat/completions", json=SMALL,
                                    headers={"authorization": f"Bearer {key}"}).status_code
                except httpx.TimeoutException:
                    status = 0  # no answer within 10 s
                with lock:
                    out.append((time.monotonic(), status))
                n += 1
                if pause_s:
                    time.sleep(pause_s)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _spend(urls: list[str], key: str) -> float:
    total = 0.0
    for u in urls:
        for line in httpx.get(u + "/metrics", timeout=5).text.splitlines():
            if line.startswith(f'edgecloud_gateway_key_cloud_spend_usd_total{{key="{key}"}}'):
                total += float(line.split()[-1])
    return total


def _minute(got: list[tuple[float, int]], window_s: float) -> dict[str, Any]:
    """What a limit of 60 a minute let through: answers in the first 60 s and the most in any
    60 s of the run (a client's view of "per minute"), and what else the clients got."""
    t0 = got[0][0] if got else 0.0
    ok = [t for t, s in got if s == 200]
    return {"attempts": len(got), "answered": len(ok), "window_s": window_s,
            "answered_first_60s": sum(1 for t in ok if t - t0 < 60),
            "most_in_any_60s": max((sum(1 for u in ok if t <= u < t + 60) for t in ok),
                                   default=0),
            "errors": sum(1 for _, s in got if s not in (200, 429)),
            "statuses": sorted({s for _, s in got}),
            "timed_out_10s": sum(1 for _, s in got if s == 0),
            "answer_times_s": [round(t - t0, 3) for t in ok]}


def _print_minute(m: dict[str, Any]) -> None:
    print(f"  rpm 60: {m['answered_first_60s']} answered in the first 60 s, "
          f"{m['most_in_any_60s']} at most in any 60 s ({m['answered']} of {m['attempts']} in "
          f"{m['window_s']:.0f} s; statuses {m['statuses']}; {m['errors']} other than 200 or "
          f"429; {m['timed_out_10s']} got no answer within 10 s)", flush=True)


def correctness(p: Peers, up: str, redis: RedisServer, window_s: float) -> dict[str, Any]:
    env = {"EDGECLOUD_REDIS_URL": redis.url}
    gws = [_cloud_only(p, up, "redis", env, f"gw{i}", GLOBAL_CAP) for i in range(3)]
    res: dict[str, Any] = {"rpm60": _minute(
        _hammer(gws, KEYS["rpm60"], clients=3, seconds=window_s, pause_s=0.05), window_s)}
    # Caps: a key's own, then the global hard budget (another key, no cap of its own).
    for key, cap in (("capped", KEY_CAP), ("free", GLOBAL_CAP)):
        got = _hammer(gws, KEYS[key], clients=12, seconds=6, pause_s=0.0)
        spent = (_spend(gws, key) if key == "capped"
                 else sum(_spend(gws, k) for k in KEYS))  # the global budget counts every key
        res[f"cap_{key}"] = {"cap_usd": cap, "spent_usd": round(spent, 6),
                             "answered": sum(1 for _, s in got if s == 200),
                             "refused_429": sum(1 for _, s in got if s == 429),
                             "other": sum(1 for _, s in got if s not in (200, 429))}
    return res


def redis_cpu_s(url: str) -> float:
    """CPU seconds redis-server has used so far (INFO cpu)."""
    import redis as redis_sync

    client = redis_sync.Redis.from_url(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


def redis_round_trip_ms(url: str, n: int = 2000) -> float:
    """p50 of one PING through redis-py's asyncio client here: the floor of what a shared
    store adds per request on this machine."""
    import asyncio
    import statistics

    import redis.asyncio as aioredis

    async def run() -> float:
        client = aioredis.Redis.from_url(url)
        await client.ping()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            await client.ping()
            samples.append(time.perf_counter() - t)
        await client.aclose()
        return statistics.median(samples) * 1000

    return asyncio.run(run())


def litellm_drift(p: Peers, up: str, redis: RedisServer, window_s: float) -> dict[str, Any]:
    """The same rpm 60 run against 3 LiteLLM proxy processes sharing one Redis (its router's
    deployment rpm with usage-based routing and Redis, as its docs set up shared limits)."""
    host, port = redis.url.split("//", 1)[1].split("/", 1)[0].split(":")
    cfg = {
        "model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
            "model": "openai/standin", "api_base": up + "/v1", "api_key": "none", "rpm": 60}}],
        "router_settings": {"routing_strategy": "usage-based-routing-v2",
                            "redis_host": host, "redis_port": int(port),
                            "enable_pre_call_checks": True},
        "litellm_settings": {"drop_params": True},
    }
    urls = [p.litellm_proxy(cfg, f"litellm-{i}", timeout_s=300) for i in range(3)]
    return _minute(_hammer(urls, "none", clients=3, seconds=window_s, pause_s=0.05), window_s)


def cost(p: Peers, up: str, redis: RedisServer, seconds: float, body: Path,
         rounds: int = 5) -> dict[str, Any]:
    """Per concurrency, memory and redis in turn, `rounds` times (this machine's speed drifts
    within a run); per target the round with the median req/s."""
    env = {"EDGECLOUD_REDIS_URL": redis.url}
    targets = {"memory": _cloud_only(p, up, "memory", env, "one-memory"),
               "redis": _cloud_only(p, up, "redis", env, "one-redis")}
    auth = {"Authorization": f"Bearer {KEYS['limited']}"}
    out: dict[str, Any] = {}
    for conc in (1, 16):
        runs: dict[str, list[dict[str, Any]]] = {}
        for i in range(rounds):
            for name, url in (targets.items() if i % 2 == 0 else reversed(targets.items())):
                gw0, redis0 = p.cpu_s(url) or 0.0, redis_cpu_s(redis.url)
                r = wrk(url, body, conc, seconds, auth)
                requests = max(r["rps"] * max(int(seconds), 1), 1.0)
                r["gateway_cpu_us_per_request"] = ((p.cpu_s(url) or 0.0) - gw0) / requests * 1e6
                r["redis_cpu_us_per_request"] = ((redis_cpu_s(redis.url) - redis0) / requests
                                                 * 1e6)
                runs.setdefault(name, []).append(r)
        for name, rs in runs.items():
            mid = statistics.median(x["rps"] for x in rs)
            r = out[f"{name}/c{conc}"] = min(rs, key=lambda x: abs(x["rps"] - mid))
            r["rounds_rps"] = [x["rps"] for x in rs]
            print(f"  {name:<8} c{conc:<3} {r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                  f"p99 {r['p99_ms']:.3f} ms  errors {r['errors']:.0f}  CPU per request: "
                  f"gateway {r['gateway_cpu_us_per_request']:.0f} us, redis-server "
                  f"{r['redis_cpu_us_per_request']:.0f} us  (rounds: "
                  f"{', '.join(f'{x:.0f}' for x in r['rounds_rps'])})", flush=True)
    out["redis_ping_p50_ms"] = redis_round_trip_ms(redis.url)
    print(f"  one Redis round trip (PING, redis-py asyncio) p50 here: "
          f"{out['redis_ping_p50_ms']:.3f} ms", flush=True)
    out["rps_ratio_c16"] = out["redis/c16"]["rps"] / max(out["memory/c16"]["rps"], 1e-9)
    out["added_p50_ms_c1"] = out["redis/c1"]["p50_ms"] - out["memory/c1"]["p50_ms"]
    return out


def workers(p: Peers, up: str, seconds: float, body: Path, rounds: int = 3) -> dict[str, Any]:
    """Each target in turn, `rounds` times (this machine's speed drifts within a run); per
    target the round with the median req/s, and the CPU per request of it and the upstream."""
    targets = {"nginx-2": p.nginx(up, "2"), "edgecloud-1": p.gateway(up, name="gw-one"),
               "edgecloud-w2": p.gateway(up, args=("--workers", "2"), name="gw-w2")}
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for name, url in targets.items():
            cpu0, up0 = p.cpu_s(url) or 0.0, p.cpu_s(up) or 0.0
            r = wrk(url, body, 16, seconds)
            n = max(r["rps"] * max(int(seconds), 1), 1.0)
            r["proxy_cpu_us_per_request"] = ((p.cpu_s(url) or 0.0) - cpu0) / n * 1e6
            r["upstream_cpu_us_per_request"] = ((p.cpu_s(up) or 0.0) - up0) / n * 1e6
            runs.setdefault(name, []).append(r)
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        mid = statistics.median(x["rps"] for x in rs)
        r = out[name] = min(rs, key=lambda x: abs(x["rps"] - mid))
        r["rounds_rps"] = [x["rps"] for x in rs]
        print(f"  {name:<13} c16 {r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
              f"errors {r['errors']:.0f}  CPU per request: proxy "
              f"{r['proxy_cpu_us_per_request']:.0f} us, upstream "
              f"{r['upstream_cpu_us_per_request']:.0f} us  (rounds: "
              f"{', '.join(f'{x:.0f}' for x in r['rounds_rps'])})", flush=True)
    out["w2_vs_nginx2"] = out["edgecloud-w2"]["rps"] / max(out["nginx-2"]["rps"], 1e-9)
    out["w1_vs_nginx2"] = out["edgecloud-1"]["rps"] / max(out["nginx-2"]["rps"], 1e-9)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    ap.add_argument("--window", type=float, default=90.0, help="the rpm 60 runs (a) and (d)")
    ap.add_argument("--only", choices=["a", "b", "c", "d", "e"], action="append")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    parts = args.only or ["a", "b", "c", "d", "e"]
    results: dict[str, Any] = {}
    with peers("gw-state-") as p:
        tmp = p.tmp
        redis = RedisServer(tmp / "redis").start()
        p.callback(redis.stop)
        body = tmp / "small.json"
        body.write_text(json.dumps(SMALL), encoding="utf-8")
        up = p.upstream()
        if "a" in parts:
            print(f"(a) 3 gateways, one Redis: rpm 60 for {args.window:.0f} s; then the caps",
                  flush=True)
            a = results["correctness"] = correctness(p, up, redis, args.window)
            _print_minute(a["rpm60"])
            for k in ("cap_capped", "cap_free"):
                c = a[k]
                print(f"  {k}: cap {c['cap_usd']} USD, spent {c['spent_usd']} USD, "
                      f"{c['answered']} answered, {c['refused_429']} refused (429), "
                      f"{c['other']} other")
        if "b" in parts:
            print("(b) one gateway, a key with every limit and a hard budget: memory vs redis",
                  flush=True)
            b = results["cost"] = cost(p, up, redis, args.seconds, body)
            print(f"  redis/memory req/s at c16: {b['rps_ratio_c16']:.2f}x (target >= 0.8x); "
                  f"added p50 at c1: {b['added_p50_ms_c1']:+.3f} ms (target <= +0.3 ms)")
        if "c" in parts:
            print("(c) --workers 2 vs nginx with 2 workers, small body, c16", flush=True)
            c = results["workers"] = workers(p, up, args.seconds, body)
            print(f"  --workers 2 / nginx 2 workers: {c['w2_vs_nginx2']:.2f}x (target >= 0.35x);"
                  f" one process: {c['w1_vs_nginx2']:.2f}x")
        if "e" in parts:  # before (d): its three LiteLLM proxies would still be running
            print("(e) req/s at c16: edgecloud with Redis state vs LiteLLM (no limits)", flush=True)
            gw = _cloud_only(p, up, "redis", {"EDGECLOUD_REDIS_URL": redis.url}, "one-redis")
            lite = p.litellm(up)
            runs: dict[str, list[dict[str, float]]] = {}
            for _ in range(3):  # alternating, medians: this machine's speed drifts within a run
                for label, key in (("edgecloud_redis", "limited"),
                                   ("edgecloud_redis_budget", "free")):
                    runs.setdefault(label, []).append(wrk(
                        gw, body, 16, args.seconds, {"Authorization": f"Bearer {KEYS[key]}"}))
                runs.setdefault("litellm", []).append(wrk(lite, body, 16, max(args.seconds, 4)))
            e = results["vs_litellm"] = {
                label: min(rs, key=lambda r: abs(r["rps"] - statistics.median(
                    x["rps"] for x in rs))) for label, rs in runs.items()}
            theirs = e["litellm"]
            e["ratio"] = e["edgecloud_redis"]["rps"] / max(theirs["rps"], 1e-9)
            e["ratio_budget"] = e["edgecloud_redis_budget"]["rps"] / max(theirs["rps"], 1e-9)
            print(f"  edgecloud (redis; a key with every limit, the hard budget) "
                  f"{e['edgecloud_redis']['rps']:.0f} req/s = {e['ratio']:.1f}x; (redis; a key "
                  f"with no limits, the hard budget) {e['edgecloud_redis_budget']['rps']:.0f} "
                  f"req/s = {e['ratio_budget']:.1f}x; LiteLLM {theirs['rps']:.0f} req/s "
                  "(target >= 50x)")
        if "d" in parts:
            print(f"(d) 3 LiteLLM proxies, one Redis: deployment rpm 60 for {args.window:.0f} s",
                  flush=True)
            _print_minute(results.setdefault("litellm", litellm_drift(p, up, redis, args.window)))
    samples = {}
    if "correctness" in results:
        samples["rpm60_answer_times_s"] = results["correctness"]["rpm60"].pop("answer_times_s")
    if "litellm" in results:
        samples["litellm_answer_times_s"] = results["litellm"].pop("answer_times_s")
    name = "gateway_state" if not args.only else "gateway_state_" + "".join(sorted(parts))
    write_result(name, summary=results, samples=samples,
                 params={"seconds": args.seconds, "window_s": args.window, "parts": parts})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
