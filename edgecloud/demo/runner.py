"""`edgecloud demo`: the whole system end to end on the embedded model, with a live view.

Phases: public text, personal data, EU/CN-tagged data, a screenshot, a burst that overloads the
edge, an edge outage (and its return), a cloud outage. Then both tiers are benched briefly,
`decide` runs on the measurements, and one HTML report is written.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console

from edgecloud.demo.driver import Outcome, send
from edgecloud.demo.live import LiveView
from edgecloud.demo.run_report import write_report
from edgecloud.demo.scenario import DemoRequest, build_phases
from edgecloud.demo.stack import DemoStack, StackOptions
from edgecloud.demo.types import DemoOptions, DemoResult
from edgecloud.supervise import edgecloud_command

__all__ = ["DemoOptions", "DemoResult", "pid_alive", "run_demo", "summarise"]


def _scrape(url: str) -> dict[str, float]:
    """Prometheus text to {series: value} (labels kept in the key)."""
    out: dict[str, float] = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


async def _run_phase(
    view: LiveView,
    client: httpx.AsyncClient,
    base: str,
    reqs: list[DemoRequest],
    t0: float,
    concurrent: bool = False,
) -> None:
    if concurrent:
        for o in await asyncio.gather(*(send(client, base, r, t0) for r in reqs)):
            view.add(o)
        return
    for r in reqs:
        view.add(await send(client, base, r, t0))


async def _drive(
    stack: DemoStack,
    opts: DemoOptions,
    view: LiveView,
    phases: dict[str, list[DemoRequest]],
    extra: Callable[[str, list[DemoRequest]], list[DemoRequest]],
) -> None:
    base = f"{stack.gateway_url}/v1"
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for name, reqs in phases.items():
            view.set_phase(name)
            await _run_phase(view, client, base, reqs, t0, concurrent=name == "burst")
        # An edge outage: public requests move to the cloud, private ones are refused, except
        # the one whose only personal data is an e-mail address: it goes as a surrogate.
        view.set_phase("edge outage (edge node killed)")
        assert stack.edge is not None
        stack.edge.kill()
        stack.edge.proc.wait(10)  # type: ignore[union-attr]
        await _run_phase(view, client, base, extra("edge outage", phases["personal data"]), t0)
        view.set_phase("edge back (node restarted)")
        await asyncio.to_thread(stack.start_edge)
        await asyncio.sleep(1.5)  # the gateway's health check runs every 0.5 s
        await _run_phase(view, client, base, extra("edge back", []), t0)
        view.set_phase("cloud outage (WAN link cut)")
        assert stack.link is not None
        stack.link.cut()
        await _run_phase(view, client, base, extra("cloud outage", []), t0)
        stack.link.restore()


def _extra_factory(
    opts: DemoOptions, phases: dict[str, list[DemoRequest]]
) -> Callable[[str, list[DemoRequest]], list[DemoRequest]]:
    """Requests for the outage phases, reusing the bodies of the public ones."""
    public = phases["public text"] + phases["burst"]

    def make(phase: str, private: list[DemoRequest]) -> list[DemoRequest]:
        n = 2 if opts.quick else 3
        out = [DemoRequest(phase, "public", public[i].body) for i in range(n)]
        out += [DemoRequest(phase, p.kind, p.body, p.headers, True, p.marker) for p in private[:2]]
        return out

    return make


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    """Placements by reason, latency per tier, fallbacks and refusals (pure)."""
    by_reason = Counter((o.placement, o.reason) for o in outcomes)
    tiers: dict[str, list[float]] = {}
    ttfts: dict[str, list[float]] = {}
    for o in outcomes:
        if o.placement in ("edge", "cloud") and o.status == 200:
            tiers.setdefault(o.placement, []).append(o.e2e_ms)
            if o.ttft_ms is not None:
                ttfts.setdefault(o.placement, []).append(o.ttft_ms)
    return {
        "requests": len(outcomes),
        "placements": dict(Counter(o.placement for o in outcomes)),
        "by_reason": [
            {"placement": p, "reason": r, "count": n} for (p, r), n in sorted(by_reason.items())
        ],
        "latency_ms": {
            tier: {
                "count": len(v),
                "p50": _pct(v, 50),
                "p95": _pct(v, 95),
                "ttft_p50": _pct(ttfts.get(tier, []), 50),
            }
            for tier, v in tiers.items()
        },
        "fallbacks": sum(1 for o in outcomes if o.reason.startswith("fallback")),
        "refusals": sum(1 for o in outcomes if o.placement == "refused"),
        "private_requests": sum(1 for o in outcomes if o.private),
        "private_placed_in_cloud": sum(
            1 for o in outcomes
            if o.private and o.placement == "cloud" and o.reason != "privacy.pseudonymized"
        ),
        "private_sent_as_surrogates": sum(
            1 for o in outcomes if o.private and o.reason == "privacy.pseudonymized"
        ),
    }


def screenshot_step(outcomes: list[Outcome], mmproj: Path | None) -> dict[str, Any]:
    """Where the screenshot step ran, and what the edge's projector made of it (pure)."""
    shots = [o for o in outcomes if o.kind == "screenshot"]
    return {
        "requests": len(shots),
        "served_on_edge": sum(1 for o in shots if o.placement == "edge" and o.status == 200),
        "placements": [o.placement for o in shots],
        "prompt_tokens": [o.prompt_tokens for o in shots],
        "ttft_ms": [o.ttft_ms for o in shots],
        "projector": mmproj.name if mmproj is not None else None,
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _bench(stack: DemoStack, opts: DemoOptions, console: Console) -> dict[str, str]:
    files: dict[str, str] = {}
    n = "3" if opts.quick else "6"
    for label, url in (("edge", stack.edge_url), ("cloud", stack.cloud_url)):
        out = opts.out_dir / f"bench-{label}.json"
        console.print(f"[bold]bench[/] {label} tier ({url})")
        cmd = edgecloud_command(
            "bench",
            url,
            "--scenario",
            "concurrency",
            "--concurrency",
            "1,2",
            "--requests",
            n,
            "--max-tokens",
            "16",
            "--out",
            str(out),
            "--label",
            label,
            "--quiet",
        )
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if out.exists():
            files[f"bench_{label}"] = str(out)
        else:
            console.print(f"[yellow]bench {label} wrote no results:[/] {r.stderr.strip()[-300:]}")
    return files


def _decide(opts: DemoOptions, files: dict[str, str], console: Console) -> dict[str, str]:
    from edgecloud.demo import assets

    out_json = opts.out_dir / "decision.json"
    out_html = opts.out_dir / "decision.html"
    cmd = edgecloud_command(
        "decide",
        "--workload",
        str(assets.path("workload.yaml")),
        "--prices",
        str(assets.path("prices.yaml")),
        "--json",
        str(out_json),
        "--report",
        str(out_html),
    )
    for key in ("bench_edge", "bench_cloud"):
        if key in files:
            cmd += ["--bench", files[key]]
    console.print("[bold]decide[/] with the example workload and the measurements")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    console.print(r.stdout.rstrip()[-3000:])
    if r.returncode != 0:
        console.print(f"[yellow]decide failed:[/] {r.stderr.strip()[-500:]}")
        return {}
    return {"decision_json": str(out_json), "decision_html": str(out_html)}


def demo_projector(out_dir: Path) -> Path:
    """The edge's projector: a tiny gemma3-type one with random weights for the embedded model,
    made here once and kept in the demo's cache folder (its answers about images are nonsense;
    decode, resize, encode, embed and generate are all real)."""
    from edgecloud.testing.tiny_mmproj import cached_tiny_mmproj

    return cached_tiny_mmproj(root=out_dir / "cache")


def run_demo(opts: DemoOptions, console: Console) -> DemoResult:
    """Run every phase; always stops what it started (also on Ctrl-C)."""
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    phases = build_phases(opts.max_tokens, opts.quick)
    markers = [r.marker for reqs in phases.values() for r in reqs if r.private and r.marker]
    markers += [m for reqs in phases.values() for r in reqs if r.private for m in r.more_markers]
    console.print("Writing the edge's vision projector (random weights, for the embedded model) …")
    mmproj = demo_projector(opts.out_dir)
    stack = DemoStack(
        StackOptions(out_dir=opts.out_dir, link=opts.link, edge_mmproj=mmproj), markers
    )
    files: dict[str, str] = {}
    view = LiveView(console)
    try:
        console.print(
            f"Starting an edge node, a 'cloud' node behind an [bold]{opts.link.describe()}[/], "
            "and the gateway …"
        )
        stack.start()
        console.print(f"gateway: {stack.gateway_url}/v1   (point any OpenAI client here)")
        with view.live:
            asyncio.run(_drive(stack, opts, view, phases, _extra_factory(opts, phases)))
        metrics = _scrape(f"{stack.gateway_url}/metrics")
        (opts.out_dir / "gateway-metrics.txt").write_text(
            httpx.get(f"{stack.gateway_url}/metrics", timeout=10).text
        )
        if opts.bench:
            files.update(_bench(stack, opts, console))
    finally:
        stack.stop()
    if opts.decide:
        files.update(_decide(opts, files, console))
    guarantees = summarise(view.outcomes)
    guarantees["cloud_link_private_marker_hits"] = sum(stack.tap.hits.values())
    guarantees["cloud_link_bytes"] = stack.tap.bytes_seen
    guarantees["screenshot"] = screenshot_step(view.outcomes, stack.opts.edge_mmproj)
    result = DemoResult(view.outcomes, guarantees, files, stack.pids, metrics)
    files["report"] = str(write_report(opts, result))
    files["summary"] = str(_write_summary(opts, result))
    return result


def _write_summary(opts: DemoOptions, result: DemoResult) -> Path:
    path = opts.out_dir / "demo-summary.json"
    path.write_bytes(
        orjson.dumps(
            {
                "summary": result.guarantees,
                "outcomes": [o.as_dict() for o in result.outcomes],
                "files": result.files,
                "child_pids": result.pids,
                "link": opts.link.describe(),
                "gateway_metrics": result.gateway_metrics,
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
