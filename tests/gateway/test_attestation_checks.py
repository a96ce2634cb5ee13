"""The pure attestation checks: every way a token can fail is refused, by its named reason."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from edgecloud.gateway import attestation_checks as at
from edgecloud.gateway.attestation_checks import (
    AttestationFailure,
    AttestationStatus,
    Expectations,
)
from edgecloud.testing.standin_attestation import (
    GOOD_CLAIMS,
    ISSUER,
    jwks_of,
    make_signer,
    sign,
    token_claims,
)

KEY = make_signer("k1")
KEYS = at.load_jwks(jwks_of(KEY))
NONCE = "0f" * 32
TLS = "cd" * 32
EXPECT = Expectations(ISSUER, {"tdx_mrtd": GOOD_CLAIMS["tdx_mrtd"], "tdx_is_debuggable": False,
                               "attester_tcb_status": ["UpToDate", "SWHardeningNeeded"]}, 300)


def verify(token: str, now: float | None = None, nonce: str = NONCE, observed: str | None = TLS,
           expect: Expectations = EXPECT) -> at.Verified:
    return at.verify_token(token, KEYS, expect, nonce, observed,
                           time.time() if now is None else now)


def reason(token: str, **kw: Any) -> str:
    with pytest.raises(AttestationFailure) as info:
        verify(token, **kw)
    return info.value.reason


def test_a_good_token_binds_its_key_until_the_earlier_of_exp_and_max_age() -> None:
    now = time.time()
    v = verify(sign(KEY, token_claims(NONCE, TLS, ttl_s=1000, issued=now)), now=now)
    assert v.key_sha256 == TLS
    assert v.valid_until == pytest.approx(int(now) + 300)
    v = verify(sign(KEY, token_claims(NONCE, TLS.upper(), ttl_s=60, issued=now)), now=now)
    assert v.key_sha256 == TLS and v.valid_until == int(now) + 60


def test_signature_by_another_key_is_refused() -> None:
    assert reason(sign(make_signer("k1"), token_claims(NONCE, TLS))) == at.SIGNATURE_INVALID
    assert reason(sign(make_signer("k9"), token_claims(NONCE, TLS))) == at.UNKNOWN_KEY


def test_symmetric_and_unsigned_algorithms_are_refused() -> None:
    secret = OctKey.generate_key(256)
    hs = jwt.encode({"alg": "HS256", "kid": "k1"}, token_claims(NONCE, TLS), secret)
    assert reason(hs) == at.ALGORITHM_NOT_ALLOWED
    import base64
    import json

    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    unsigned = b64({"alg": "none"}) + "." + b64(token_claims(NONCE, TLS)) + "."
    assert reason(unsigned) in (at.ALGORITHM_NOT_ALLOWED, at.TOKEN_MALFORMED)


def test_rsa_pss_tokens_verify_too() -> None:
    rsa = RSAKey.generate_key(2048, {"kid": "r1"}, private=True)
    keys = at.load_jwks({"keys": [rsa.as_dict(private=False)]})
    token = sign(rsa, token_claims(NONCE, TLS), alg="PS384")  # Intel Trust Authority's
    assert at.verify_token(token, keys, EXPECT, NONCE, TLS, time.time()).key_sha256 == TLS


@pytest.mark.parametrize(("change", "why"), [
    ({"iss": "https://elsewhere.test"}, at.ISSUER_MISMATCH),
    ({"nonce": "00" * 32}, at.NONCE_MISMATCH),
    ({"tdx_mrtd": "ff" * 48}, at.CLAIM_MISMATCH),
    ({"tdx_is_debuggable": True}, at.CLAIM_MISMATCH),
    ({"tdx_is_debuggable": 0}, at.CLAIM_MISMATCH),  # not the boolean false
    ({"attester_tcb_status": "OutOfDate"}, at.CLAIM_MISMATCH),
    ({"tls_key_sha256": "ab" * 32}, at.TLS_KEY_MISMATCH),
    ({"tls_key_sha256": "short"}, at.KEY_BINDING_MISSING),
    ({"iat": "yesterday"}, at.TOKEN_MALFORMED),
])
def test_each_wrong_claim_is_named(change: dict[str, Any], why: str) -> None:
    assert reason(sign(KEY, {**token_claims(NONCE, TLS), **change})) == why


def test_missing_claims_are_refused() -> None:
    for name, why in (("nonce", at.NONCE_MISMATCH), ("tdx_mrtd", at.CLAIM_MISMATCH),
                      ("tls_key_sha256", at.KEY_BINDING_MISSING), ("exp", at.TOKEN_MALFORMED),
                      ("iss", at.ISSUER_MISMATCH)):
        claims = token_claims(NONCE, TLS)
        del claims[name]
        assert reason(sign(KEY, claims)) == why, name


def test_times_expired_future_and_too_old() -> None:
    now = time.time()
    assert reason(sign(KEY, token_claims(NONCE, TLS, 60, now - 120)), now=now) == at.EXPIRED
    assert reason(sign(KEY, token_claims(NONCE, TLS, 60, now + 600)), now=now) == at.NOT_YET_VALID
    old = sign(KEY, token_claims(NONCE, TLS, 10_000, now - 1000))
    assert reason(old, now=now) == at.TOO_OLD


def test_a_replayed_token_fails_on_the_nonce() -> None:
    token = sign(KEY, token_claims(NONCE, TLS))
    verify(token)
    assert reason(token, nonce="1e" * 32) == at.NONCE_MISMATCH


def test_garbage_is_malformed() -> None:
    for junk in ("", "abc", "a.b.c", "eyJhbGciOiJFUzM4NCJ9.e30.AAAA"):
        assert reason(junk) in (at.TOKEN_MALFORMED, at.SIGNATURE_INVALID), junk


def test_nested_claims_and_dotted_key_claims() -> None:
    expect = Expectations(ISSUER, {"tdx": {"tdx_mrtd": "a1" * 48}}, 300,
                          nonce_claim="eat.nonce", key_claim="eat.key")
    claims = token_claims(NONCE, TLS)
    claims.update(tdx={"tdx_mrtd": "a1" * 48}, eat={"nonce": NONCE, "key": TLS})
    del claims["nonce"], claims["tls_key_sha256"]
    assert verify(sign(KEY, claims), expect=expect).key_sha256 == TLS
    claims["tdx"] = {"tdx_mrtd": "00"}
    assert reason(sign(KEY, claims), expect=expect) == at.CLAIM_MISMATCH


def test_jwks_loader_refuses_private_and_empty_sets() -> None:
    for bad in ({}, {"keys": []}, {"keys": [{"kty": "oct", "k": "AAAA"}]},
                {"keys": [KEY.as_dict(private=True)]}):
        with pytest.raises(ValueError):
            at.load_jwks(bad)


def test_status_revokes_at_once_and_counts_reasons() -> None:
    st = AttestationStatus("cc")
    assert not st.attested(0.0) and st.bound_key(0.0) is None
    st.accept(at.Verified(TLS, 1000.0, 1060.0, {}), now=10.0, now_epoch=1000.0)
    assert st.attested(69.9) and not st.attested(70.0) and st.bound_key(20.0) == TLS
    gen = st.generation
    st.revoke(at.NONCE_MISMATCH, "replayed")
    assert not st.attested(11.0) and st.failures == {at.NONCE_MISMATCH: 1}
    assert st.generation > gen and st.last_reason == at.NONCE_MISMATCH
