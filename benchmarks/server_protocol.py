"""Our HTTP/1.1 server protocol against uvicorn's, on the same app, in alternating rounds.

The app answers at once (it reads the body and sends a fixed chat completion, with the headers
the gateway sends), so what is measured is the server stack alone: uvicorn's server with its
`HttpToolsProtocol` (uvloop, httptools: the peer) against uvicorn's server with ours
(`edgecloud.api.protocol.HttpProtocol` and the connection guard, as `serve_forever` runs every
server of ours). wrk posts a small body at concurrency 16; each side's CPU per request comes
from its process's CPU time.

    python benchmarks/server_protocol.py [--rounds 6] [--seconds 3]

Writes benchmarks/results/server_protocol.json.

Needs wrk (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ANSWER = (b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":'
          b'"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,'
          b'"completion_tokens":1,"total_tokens":13}}')
HEADERS = [(b"content-type", b"application/json"),
           (b"content-length", str(len(ANSWER)).encode()),
           (b"x-edgecloud-placement", b"edge"), (b"x-edgecloud-endpoint", b"edge-box"),
           (b"x-edgecloud-reason", b"cost")]
SIDES = ("uvicorn", "edgecloud")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    from edgecloud.api.asgi import read_body

    await read_body(receive, 1 << 20)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def serve(side: str, port: int) -> None:
    """Run the app on one side's stack until killed."""
    if side == "edgecloud":
        from edgecloud.api.serving import serve_forever

        serve_forever(app, "127.0.0.1", port, backlog=4096)
        return
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                lifespan="off", access_log=False, log_level="warning", server_header=False,
                date_header=False, backlog=4096)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--serve", nargs=2, metavar=("SIDE", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.gateway_overhead import SMALL
    from benchmarks.gateway_peers import wrk
    from edgecloud.supervise import free_port
    from edgecloud.testing.cputime import process_cpu_s
    from edgecloud.testing.figures import write_result

    procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    with tempfile.TemporaryDirectory(prefix="server-protocol-") as d:
        body = Path(d) / "small.json"
        body.write_text(json.dumps(SMALL), encoding="utf-8")
        try:
            for side in SIDES:
                port = free_port()
                proc = subprocess.Popen([sys.executable, __file__, "--serve", side, str(port)],
                                        cwd=d)
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 60
                while True:
                    try:
                        httpx.post(url + "/v1/chat/completions", content=b"{}", timeout=5)
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline or proc.poll() is not None:
                            sys.exit(f"the {side} server did not start")
                        time.sleep(0.1)
                procs[side] = (proc, url)
                wrk(url, body, 16, 1)  # warm
            runs: dict[str, list[dict[str, float]]] = {s: [] for s in SIDES}
            for r in range(args.rounds):  # alternating: this machine's speed drifts in a run
                for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                    proc, url = procs[side]
                    cpu0 = process_cpu_s(proc.pid)
                    w = wrk(url, body, 16, args.seconds)
                    n = max(w["rps"] * max(int(args.seconds), 1), 1.0)
                    w["cpu_us_per_request"] = (process_cpu_s(proc.pid) - cpu0) / n * 1e6
                    runs[side].append(w)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(10)
    out: dict[str, Any] = {}
    for side in SIDES:
        rs = runs[side]
        out[side] = {"rps": statistics.median(x["rps"] for x in rs),
                     "cpu_us_per_request": statistics.median(x["cpu_us_per_request"] for x in rs),
                     "p50_ms": statistics.median(x["p50_ms"] for x in rs),
                     "errors": sum(x["errors"] for x in rs),
                     "rounds_rps": [round(x["rps"]) for x in rs]}
        o = out[side]
        print(f"{side:<10} {o['rps']:>9.0f} req/s  {o['cpu_us_per_request']:5.1f} us CPU per "
              f"request  p50 {o['p50_ms']:.3f} ms  errors {o['errors']:.0f}  "
              f"(rounds: {', '.join(map(str, o['rounds_rps']))})")
    out["cpu_ratio"] = out["edgecloud"]["cpu_us_per_request"] / out["uvicorn"][
        "cpu_us_per_request"]
    out["rps_ratio"] = out["edgecloud"]["rps"] / max(out["uvicorn"]["rps"], 1e-9)
    print(f"edgecloud / uvicorn: CPU per request {out['cpu_ratio']:.2f}x, "
          f"req/s {out['rps_ratio']:.2f}x (medians of {args.rounds} alternating rounds)")
    write_result("server_protocol", summary=out, samples=runs,
                 params={"rounds": args.rounds, "seconds": args.seconds, "concurrency": 16})


if __name__ == "__main__":
    main()
