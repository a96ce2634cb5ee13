"""A stand-in for a confidential cloud endpoint (vLLM in a TDX VM), for tests: HTTPS with its own
self-signed key, the OpenAI routes of edgecloud.testing.standin_provider (recording what it
receives), and an evidence route. Run:
  python tests/gateway/standin_confidential.py --port P --verifier URL --key-file F [--mitm URL]
Routes besides standin_provider's:
  GET /attestation?nonce=HEX -> {"token": JWT}: asks the verifier for a token binding the nonce
      and this server's TLS key (the real one would send its TD quote and GPU evidence)
  POST /_control also takes {"evidence": "ok" | "hang" | "replay" | "other_key"}
      replay: the first token ever issued (an old nonce); other_key: bound to a key not ours
With --mitm URL it plays a man in the middle: its own certificate, and the evidence of the real
endpoint at URL relayed unchanged (a valid token bound to the real endpoint's key).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgecloud.api.asgi import send_json  # noqa: E402
from edgecloud.testing import standin_provider as provider  # noqa: E402
from edgecloud.testing.tlskeys import ensure_key, key_sha256, write_self_signed  # noqa: E402

ARGS = argparse.Namespace()
EVIDENCE: dict[str, Any] = {"first": None, "served": 0}


async def _evidence(scope: Any, send: Any) -> None:
    nonce = (parse_qs(scope.get("query_string", b"").decode()).get("nonce") or [""])[0]
    mode = provider.STATE["control"].get("evidence", "ok")
    if mode == "hang":
        await asyncio.sleep(3600)
    async with httpx.AsyncClient(verify=False, timeout=10) as client:
        if ARGS.mitm:
            r = await client.get(ARGS.mitm + "/attestation", params={"nonce": nonce})
            await send_json(send, r.status_code, r.json())
            return
        bound = "ab" * 32 if mode == "other_key" else ARGS.key_sha256
        r = await client.post(ARGS.verifier + "/attest",
                              json={"nonce": nonce, "tls_key_sha256": bound})
    token = r.json()["token"]
    if EVIDENCE["first"] is None:
        EVIDENCE["first"] = token
    if mode == "replay":
        token = EVIDENCE["first"]
    EVIDENCE["served"] += 1
    await send_json(send, 200, {"token": token})


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/attestation":
        await _evidence(scope, send)
    elif scope["type"] == "http" and scope["path"] == "/_evidence_served":
        await send_json(send, 200, EVIDENCE["served"])
    else:
        await provider.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="standin-cc")
    parser.add_argument("--model-id", default="standin-model")
    parser.add_argument("--verifier", default="")
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--mitm", default="")
    parser.parse_args(namespace=ARGS)
    provider.ARGS.name, provider.ARGS.model_id = ARGS.name, ARGS.model_id
    ARGS.key_sha256 = key_sha256(ensure_key(ARGS.key_file))
    cert = Path(tempfile.mkdtemp(prefix="standin-cc-")) / "cert.pem"
    write_self_signed(ARGS.key_file, cert)
    uvicorn.run(app, host="127.0.0.1", port=ARGS.port, access_log=False, log_level="warning",
                lifespan="off", ssl_certfile=str(cert), ssl_keyfile=str(ARGS.key_file))


if __name__ == "__main__":
    main()
