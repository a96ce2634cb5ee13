"""Instructions per request of the gateway's request path, counted by valgrind (callgrind).

Wall-clock and CPU-time figures on a shared 2-core machine move by 5-10% between runs, too much
to see a change of a few percent. An instruction count does not move: this drives the gateway
app in-process (no HTTP server: the ASGI callable, its policy, forwarder and upstream client, on
uvloop) against the stand-in upstream, at concurrency 16, under callgrind, for two request
counts, and prints the difference per request. Startup and imports cancel out.

    python benchmarks/gateway_instructions.py [--body small|2MB] [--against OTHER_CHECKOUT]

`--against` counts another checkout of this repository the same way, side by side (a git
worktree of main, say), and prints the ratio. Instructions are not time: the kernel, cache
misses and the server stack (uvicorn) are outside the count, so a 10% cut here shows as less
in req/s. Needs valgrind (apt-get install -y valgrind); about a minute per checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONCURRENCY = 16


def child(upstream: str, body_name: str, requests: int) -> None:
    """Run `requests` chat requests through the app (imported from sys.path[0]'s checkout)."""
    import io

    import orjson
    import uvloop

    from edgecloud.api.clientwatch import SCOPE_KEY, ClientWatch
    from edgecloud.gateway.app import GatewayApp
    from edgecloud.gateway.config import GatewayConfig
    from edgecloud.logs import AccessLog

    sys.path.append(str(ROOT))  # for the bodies (benchmarks/gateway_overhead.py)
    from benchmarks.gateway_overhead import SMALL, image_body
    from benchmarks.gateway_peers import gateway_config

    raw = orjson.dumps(SMALL if body_name == "small" else image_body())
    app = GatewayApp(GatewayConfig.model_validate(gateway_config(upstream)),
                     log=AccessLog("edgecloud.gateway.access", io.BytesIO()))
    headers = [(b"host", b"gateway"), (b"content-type", b"application/json"),
               (b"content-length", str(len(raw)).encode())]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise SystemExit(f"the gateway answered {message['status']}")

    async def one() -> None:
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"",
                 "http_version": "1.1", "headers": headers, SCOPE_KEY: ClientWatch()}
        await app(scope, receive, send)

    async def client(n: int) -> None:
        for _ in range(n):
            await one()

    async def run() -> None:
        await app.start()
        for _ in range(32):  # warm: connections open, caches filled
            await one()
        await asyncio.gather(*(client(requests // CONCURRENCY) for _ in range(CONCURRENCY)))
        await app.stop()

    uvloop.run(run())


def count(checkout: Path, upstream: str, body_name: str, requests: int) -> int:
    """Instructions callgrind counted for one child run on `checkout`."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(checkout)}
    with tempfile.TemporaryDirectory() as cwd:  # no checkout on sys.path through the cwd
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             str(Path(__file__).resolve()), "--child", upstream, "--body", body_name,
             "--requests", str(requests)],
            capture_output=True, text=True, env=env, cwd=cwd, timeout=1800)
    m = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or m is None:
        sys.exit(f"the counted run failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return int(m.group(1))


def per_request(checkout: Path, upstream: str, body_name: str, requests: int) -> float:
    low = count(checkout, upstream, body_name, requests // 3)
    high = count(checkout, upstream, body_name, requests)
    done = requests // CONCURRENCY * CONCURRENCY - requests // 3 // CONCURRENCY * CONCURRENCY
    return (high - low) / done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--body", choices=["small", "2MB"], default="small")
    ap.add_argument("--against", type=Path, help="another checkout to count side by side")
    ap.add_argument("--requests", type=int, default=0,
                    help="requests in the longer run (default 1200 small, 288 2MB)")
    ap.add_argument("--child", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = ap.parse_args()
    requests = args.requests or (1200 if args.body == "small" else 288)
    if args.child:
        child(args.child, args.body, requests)
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks.gateway_peers import need, peers

    need("valgrind", "valgrind")
    trees = [("this checkout", ROOT)]
    if args.against is not None:
        trees.append((str(args.against), args.against.resolve()))
    with peers("gw-instr-") as p:
        upstream = p.upstream()
        found = {}
        for label, tree in trees:
            found[label] = per_request(tree, upstream, args.body, requests)
            print(f"{label}: {found[label] / 1000:.1f} k instructions per request "
                  f"({args.body} body, concurrency {CONCURRENCY})", flush=True)
    if len(found) == 2:
        mine, theirs = found.values()
        print(f"this checkout / {args.against}: {mine / theirs:.3f}")


if __name__ == "__main__":
    main()
