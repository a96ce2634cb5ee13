"""A stand-in for a remote attestation service (Intel Trust Authority, NVIDIA NRAS), for tests.

It plays the verifier that has already checked a TEE's quote: it signs tokens in the generic
profile with its own key (ES384) and publishes its JWKS. Run:
  python -m edgecloud.testing.standin_attestation --port P
Routes:
  GET  /certs                                  -> its JWKS
  POST /attest {"nonce": HEX, "tls_key_sha256": HEX} -> {"token": JWT}
  POST /_control {"mode": ..., "jwks": "ok"|"down", "ttl_s": N}
     mode: ok | other_key (signed by a key not in the JWKS) | expired | wrong_claim
The helpers (`make_signer`, `sign`, `GOOD_CLAIMS`) are imported by in-process tests too.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson
import uvicorn
from joserfc import jwt
from joserfc.jwk import ECKey

from edgecloud.api.asgi import read_body, send_json

ISSUER = "https://standin-verifier.test"
# The measurement claims a good TD reports (the gateway's config requires these values).
GOOD_CLAIMS: dict[str, Any] = {
    "attester_type": "TDX",
    "tdx_mrtd": "a1" * 48,
    "tdx_is_debuggable": False,
    "attester_tcb_status": "UpToDate",
}


def make_signer(kid: str) -> ECKey:
    """A fresh ES384 signing key."""
    return ECKey.generate_key("P-384", {"kid": kid, "alg": "ES384", "use": "sig"}, private=True)


def jwks_of(*keys: ECKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


def sign(key: ECKey, claims: dict[str, Any], alg: str = "ES384") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def token_claims(nonce: str, key_sha256: str, ttl_s: float = 60.0, issued: float | None = None,
                 **extra: Any) -> dict[str, Any]:
    iat = int(time.time() if issued is None else issued)
    return {"iss": ISSUER, "iat": iat, "exp": int(iat + ttl_s), "nonce": nonce,
            "tls_key_sha256": key_sha256, **GOOD_CLAIMS, **extra}


KEY = make_signer("standin-verifier-1")
ROGUE = make_signer("standin-verifier-1")  # same kid, another key: a forged token
STATE: dict[str, Any] = {"mode": "ok", "jwks": "ok", "ttl_s": 60.0, "issued": 0}


def _token(req: dict[str, Any]) -> str:
    mode = STATE["mode"]
    ttl = float(STATE["ttl_s"])
    if mode == "expired":
        claims = token_claims(req["nonce"], req["tls_key_sha256"], ttl, time.time() - ttl - 60)
    elif mode == "wrong_claim":
        claims = token_claims(req["nonce"], req["tls_key_sha256"], ttl, tdx_mrtd="ff" * 48)
    else:
        claims = token_claims(req["nonce"], req["tls_key_sha256"], ttl)
    STATE["issued"] += 1
    return sign(ROGUE if mode == "other_key" else KEY, claims)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/healthz":
        await send_json(send, 200, {"status": "ok"})
    elif path == "/certs":
        if STATE["jwks"] == "down":
            await send_json(send, 503, {"error": "keys unavailable"})
        else:
            await send_json(send, 200, jwks_of(KEY))
    elif path == "/attest":
        req = orjson.loads(await read_body(receive, 1 << 20))
        await send_json(send, 200, {"token": _token(req)})
    elif path == "/_control":
        STATE.update(orjson.loads(await read_body(receive, 1 << 20)))
        await send_json(send, 200, STATE)
    else:
        await send_json(send, 404, {"error": "no route"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning",
                lifespan="off")


if __name__ == "__main__":
    main()
