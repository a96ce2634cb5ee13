"""What attestation costs on the request path: the gateway in front of one HTTPS upstream, once
as a plain cloud endpoint and once as an attested confidential endpoint (the same upstream, key
and requests), in one run, with wrk. Targets: >= 0.95x the req/s (concurrency 16) and at most
+0.1 ms added p50 (concurrency 1); attestation is off the request path except on expiry.

    python benchmarks/gateway_confidential.py [--seconds 8]

Writes benchmarks/results/gateway_confidential.json.

The remote parties are stand-ins: the attestation service (edgecloud/testing/
standin_attestation.py) and, here, the benchmarks' fast upstream served over TLS with a
self-signed key and an evidence route. Needs wrk (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_overhead import SMALL  # noqa: E402
from benchmarks.gateway_peers import ROOT, Peers, wrk  # noqa: E402
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port  # noqa: E402
from edgecloud.testing.figures import benchmark_parser, write_result  # noqa: E402
from edgecloud.testing.polling import wait_until  # noqa: E402


def serve_upstream(port: int, key_file: Path, verifier: str) -> None:
    """The fast upstream over TLS, plus GET /attestation?nonce=HEX (a token from the verifier
    binding the nonce and this server's key)."""
    from urllib.parse import parse_qs

    import httpx
    import orjson
    import uvicorn

    from benchmarks import gateway_upstream as fast
    from edgecloud.testing.tlskeys import ensure_key, key_sha256, write_self_signed

    bound = key_sha256(ensure_key(key_file))
    cert = key_file.with_suffix(".crt")
    write_self_signed(key_file, cert)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/attestation":
            nonce = (parse_qs(scope["query_string"].decode()).get("nonce") or [""])[0]
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(verifier + "/attest",
                                      json={"nonce": nonce, "tls_key_sha256": bound})
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": orjson.dumps(r.json())})
        else:
            await fast.app(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off", backlog=4096,
                ssl_certfile=str(cert), ssl_keyfile=str(key_file))


def _gateway(peers: Peers, tmp: Path, name: str, endpoint: dict[str, Any], *extra: str) -> str:
    port = free_port()
    cfg = {"endpoints": [endpoint], "policy": {"privacy": {"confidential": "allow"}}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    peers._run(edgecloud_command("gateway", "--config", str(path), "--port", str(port), *extra),
               f"http://127.0.0.1:{port}/readyz", name, env={"PYTHONPATH": str(ROOT)})
    return f"http://127.0.0.1:{port}"


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--serve-upstream", nargs=3, metavar=("PORT", "KEY_FILE", "VERIFIER"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        port, key_file, verifier = args.serve_upstream
        serve_upstream(int(port), Path(key_file), verifier)
        return

    with tempfile.TemporaryDirectory(prefix="gw-cc-bench-") as tmp_s, Peers(Path(tmp_s)) as p:
        tmp = Path(tmp_s)
        vport, uport = free_port(), free_port()
        verifier = f"http://127.0.0.1:{vport}"
        p._run([sys.executable, "-m", "edgecloud.testing.standin_attestation", "--port",
                str(vport)], verifier + "/healthz",
               "verifier")
        up_proc = ManagedProcess(
            [sys.executable, __file__, "--serve-upstream", str(uport), str(tmp / "up.key"),
             verifier], None, log_path=str(tmp / "upstream.log"), name="upstream",
            env={"PYTHONPATH": str(ROOT)})
        up_proc.start()
        p.callback(up_proc.stop)
        upstream = f"https://127.0.0.1:{uport}"
        _wait_tls(upstream + "/readyz")
        base = {"tier": "cloud", "url": upstream + "/v1", "region": "eu-central-1",
                "capabilities": ["text"], "max_concurrency": 64}
        plain = _gateway(p, tmp, "gateway-plain", {"name": "cloud", **base},
                         "--insecure-upstream-tls")
        from edgecloud.testing.standin_attestation import GOOD_CLAIMS, ISSUER

        attested = _gateway(p, tmp, "gateway-attested", {"name": "cloud-cc", **base,
                            "confidential": {
                                "evidence_url": upstream + "/attestation", "issuer": ISSUER,
                                "jwks_url": verifier + "/certs", "max_age_s": 300,
                                "claims": {"tdx_mrtd": GOOD_CLAIMS["tdx_mrtd"],
                                           "tdx_is_debuggable": False}}})
        body = tmp / "small.json"
        body.write_text(json.dumps(SMALL), encoding="utf-8")
        results: dict[str, dict[str, dict[str, float]]] = {}
        print(f"{args.seconds:.0f} s per run; best of two runs each, interleaved\n")
        print(f"{'target':<10} {'conc':>4} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} "
              f"{'errors':>6}")
        runs: list[dict[str, object]] = []
        for conc in (1, 16):
            for name, url in (("plain", plain), ("attested", attested),
                              ("attested", attested), ("plain", plain)):
                r = wrk(url, body, conc, args.seconds)
                runs.append({"target": name, "concurrency": conc, **r})
                print(f"{name:<10} {conc:>4} {r['rps']:>10.0f} {r['p50_ms']:>9.3f} "
                      f"{r['p99_ms']:>9.3f} {r['errors']:>6.0f}", flush=True)
                best = results.setdefault(name, {}).get(f"c{conc}")
                if best is None or r["rps"] > best["rps"]:
                    results[name][f"c{conc}"] = r
        # The gateway's own measure of the time it adds (upstream time excluded), from its
        # per-request log: steadier than wrk's end-to-end p50 on a busy machine.
        own = {name: _median_added_ms(tmp / f"gateway-{name}.log")
               for name in ("plain", "attested")}
    summary = {
        "c16 req/s attested / plain": results["attested"]["c16"]["rps"]
        / results["plain"]["c16"]["rps"],
        "c1 added p50 attested - plain (ms)": results["attested"]["c1"]["p50_ms"]
        - results["plain"]["c1"]["p50_ms"],
        "gateway-added median, plain (ms, its log)": own["plain"],
        "gateway-added median, attested (ms, its log)": own["attested"],
        "gateway-added median attested - plain (ms)": own["attested"] - own["plain"],
    }
    print("\nattested vs plain (targets: >= 0.95x req/s, <= +0.1 ms p50)")
    for k, v in summary.items():
        print(f"  {k:<46} {v:10.3f}")
    write_result("gateway_confidential", summary={"best_runs": results, "ratios": summary},
                 samples={"wrk_runs": runs}, params=vars(args))


def _median_added_ms(log: Path) -> float:
    import statistics

    added = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"event":"request"' in line:
            rec = json.loads(line)
            if rec.get("status") == 200 and "added_ms" in rec:
                added.append(float(rec["added_ms"]))
    return statistics.median(added) if added else float("nan")


def _wait_tls(url: str, timeout_s: float = 30.0) -> None:
    """Until `url` answers 200 over TLS with the upstream's self-signed certificate (which
    ManagedProcess.wait_ready, verifying certificates, would refuse)."""
    import httpx

    def up() -> bool:
        try:
            return httpx.get(url, verify=False, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout_s, f"{url} answering")


if __name__ == "__main__":
    main()
