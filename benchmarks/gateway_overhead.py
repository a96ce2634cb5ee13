"""What one gateway hop costs: direct vs nginx vs a bare Python pass-through vs edgecloud gateway
vs the LiteLLM proxy, in one run, with wrk, a small chat body and a 2 MB screenshot body, at
concurrency 1 and 16. Every target gets the same warm-up run (not counted) and the same
measured duration. Also times the privacy detector on its own.

    python benchmarks/gateway_overhead.py [--seconds 8] [--warmup 2] [--skip-litellm]

Writes benchmarks/results/gateway_overhead.json.

Needs wrk and nginx (apt-get install -y wrk nginx-light); LiteLLM is installed into
.venv-bench from benchmarks/requirements-bench.lock on first use.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_peers import peers, wrk  # noqa: E402
from edgecloud.testing.figures import benchmark_parser, write_result  # noqa: E402

SMALL = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write one sentence about the sea."}]}


def image_body() -> dict[str, object]:
    rng = random.Random(1)
    png = b"\x89PNG\r\n\x1a\n" + rng.randbytes(1_500_000)  # ~2 MB once base64-encoded
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return {"model": "autoglm-phone-9b", "max_tokens": 16, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What should I tap next?"},
            {"type": "image_url", "image_url": {"url": url}}]}]}


def privacy_cost() -> dict[str, float]:
    """Microseconds per request for the privacy detector alone (in this process)."""
    from edgecloud.gateway.config import PII_KINDS
    from edgecloud.gateway.privacy import PrivacyDetector

    det = PrivacyDetector(PII_KINDS)
    samples = {
        "english_clean_240ch": ["Please summarise the meeting notes about the Q3 roadmap. We "
                                "discussed 3 items, the budget of 10,000 and the timeline. "] * 2,
        "chinese_clean_90ch": ["你好，请帮我打开微信，给张三发一条消息：明天下午三点开会。" * 3],
        "chinese_phone": ["我的手机号是13812345678，请帮我订餐"],
        "english_email": ["forward this to jane.doe@example.com please"],
        "chat_small_body": [m["content"] for m in SMALL["messages"]],  # type: ignore[index]
    }
    out = {}
    for name, texts in samples.items():
        det.detect(texts)
        n = 20000
        out[name] = timeit.timeit(lambda t=texts: det.detect(t), number=n) / n * 1e6
    return out


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured, per target and level")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured, before each run")
    ap.add_argument("--skip-litellm", action="store_true")
    ap.add_argument("--nginx-workers", default="auto")
    args = ap.parse_args()

    results: dict[str, dict[str, dict[str, float]]] = {}
    with peers("gw-bench-") as p:
        tmp = p.tmp
        small = tmp / "small.json"
        small.write_text(json.dumps(SMALL), encoding="utf-8")
        big = tmp / "image.json"
        big.write_text(json.dumps(image_body()), encoding="utf-8")
        up = p.upstream()
        targets = {"direct": up, "nginx": p.nginx(up, args.nginx_workers),
                   "bare-python": p.bare(up), "edgecloud": p.gateway(up)}
        if not args.skip_litellm:
            targets["litellm"] = p.litellm(up)
        print(f"2 MB body: {big.stat().st_size / 1e6:.2f} MB; {args.warmup:.0f} s warm-up and "
              f"{args.seconds:.0f} s measured per run, every target\n")
        print(f"{'target':<12} {'body':<6} {'conc':>4} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}"
              f" {'errors':>6}")
        for body_name, body in (("small", small), ("2MB", big)):
            for conc in (1, 16):
                for name, url in targets.items():
                    if args.warmup > 0:
                        wrk(url, body, conc, args.warmup)
                    r = wrk(url, body, conc, args.seconds)
                    results.setdefault(name, {})[f"{body_name}/c{conc}"] = r
                    print(f"{name:<12} {body_name:<6} {conc:>4} {r['rps']:>10.0f} "
                          f"{r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['errors']:>6.0f}",
                          flush=True)
    summary = _ratios(results)
    pc = privacy_cost()
    print("\nratios and added latency")
    for k, v in summary.items():
        print(f"  {k:<48} {v:10.2f}")
    print("\nprivacy detector, microseconds per request (pure, in-process)")
    for k, v in pc.items():
        print(f"  {k:<48} {v:10.1f}")
    # wrk reports percentiles, not each request: its figures per run are the raw samples here.
    write_result("gateway_overhead", summary={"results": results, "ratios": summary,
                                              "privacy_us": pc},
                 samples={"wrk_runs": results}, params=vars(args))


def _ratios(res: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    gw = res["edgecloud"]
    for body in ("small", "2MB"):
        g16 = gw[f"{body}/c16"]["rps"]
        for peer in ("nginx", "bare-python", "litellm", "direct"):
            if peer in res and res[peer][f"{body}/c16"]["rps"]:
                out[f"{body} c16: edgecloud / {peer} (req/s)"] = g16 / res[peer][f"{body}/c16"][
                    "rps"]
        d1 = res["direct"][f"{body}/c1"]["p50_ms"]
        for name in ("nginx", "bare-python", "edgecloud", "litellm"):
            if name in res:
                out[f"{body} c1: {name} added p50 (ms)"] = res[name][f"{body}/c1"]["p50_ms"] - d1
    return out


if __name__ == "__main__":
    main()
