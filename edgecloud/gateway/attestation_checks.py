"""Attestation tokens of confidential endpoints: pure verification, no I/O and no clock of its own.

A confidential endpoint proves it runs in a trusted execution environment (TDX / SEV-SNP VM with a
GPU in confidential-compute mode) with a token from an attestation service (Intel Trust Authority,
NVIDIA NRAS, or any verifier that signs JWTs and publishes a JWKS). The generic token profile:

  iss             the attestation service (must equal the configured issuer)
  iat, exp        issued-at and expiry, seconds since the epoch (both required)
  nonce           the hex nonce the gateway sent with this evidence request (freshness)
  tls_key_sha256  hex SHA-256 of the DER SubjectPublicKeyInfo of the endpoint's TLS key (binding)
  ...             any configured claims (measurements, debug off, TCB status)

`verify_token` runs every check and raises AttestationFailure naming the one that failed; the
reasons are stable strings (metrics labels, log fields, docs/gateway.md). The I/O (fetching
evidence, re-attesting, pinning connections) is attester.py's.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

# Asymmetric signatures only: a shared-secret (HS*) or unsigned token proves nothing here.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA")

# Every way attestation can fail, by stable name. Verification (this module) ...
TOKEN_MALFORMED = "token_malformed"
ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed"
UNKNOWN_KEY = "unknown_key"
SIGNATURE_INVALID = "signature_invalid"
ISSUER_MISMATCH = "issuer_mismatch"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
TOO_OLD = "too_old"
NONCE_MISMATCH = "nonce_mismatch"
CLAIM_MISMATCH = "claim_mismatch"
KEY_BINDING_MISSING = "key_binding_missing"
TLS_KEY_MISMATCH = "tls_key_mismatch"
# ... fetching (attester.py) ...
EVIDENCE_UNREACHABLE = "evidence_unreachable"
EVIDENCE_TIMEOUT = "evidence_timeout"
EVIDENCE_INVALID = "evidence_invalid"
JWKS_UNREACHABLE = "jwks_unreachable"
JWKS_INVALID = "jwks_invalid"
TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
# ... and a data connection that showed another key than the bound one.
TLS_KEY_CHANGED = "tls_key_changed"

REASONS = (TOKEN_MALFORMED, ALGORITHM_NOT_ALLOWED, UNKNOWN_KEY, SIGNATURE_INVALID,
           ISSUER_MISMATCH, EXPIRED, NOT_YET_VALID, TOO_OLD, NONCE_MISMATCH, CLAIM_MISMATCH,
           KEY_BINDING_MISSING, TLS_KEY_MISMATCH, EVIDENCE_UNREACHABLE, EVIDENCE_TIMEOUT,
           EVIDENCE_INVALID, JWKS_UNREACHABLE, JWKS_INVALID, TLS_HANDSHAKE_FAILED,
           TLS_KEY_CHANGED)

_MISSING = object()


class AttestationFailure(Exception):
    """One attestation check failed; `reason` is one of REASONS, `detail` says what was seen."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Expectations:
    """What a token must say to attest one endpoint."""

    issuer: str
    claims: Mapping[str, Any]
    max_age_s: float
    nonce_claim: str = "nonce"
    key_claim: str = "tls_key_sha256"
    leeway_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Verified:
    """A token that passed every check: the key it binds and until when (epoch seconds)."""

    key_sha256: str
    issued_at: float
    valid_until: float
    claims: Mapping[str, Any]


def spki_sha256(cert_der: bytes) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo of a DER certificate's public key."""
    cert = x509.load_der_x509_certificate(cert_der)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at a dotted path (`tdx.tdx_mrtd`), or a sentinel when absent."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _hex_equal(seen: Any, want: str) -> bool:
    return isinstance(seen, str) and hmac.compare_digest(seen.lower().encode(), want.encode())


def check_claims(claims: Mapping[str, Any], required: Mapping[str, Any], prefix: str = "") -> None:
    """Each required claim must match: a scalar equal, a list names the accepted values, a
    mapping is matched member by member inside a nested claim."""
    for name, want in required.items():
        where = f"{prefix}{name}"
        seen = claims.get(name, _MISSING) if isinstance(claims, Mapping) else _MISSING
        if isinstance(want, Mapping):
            if not isinstance(seen, Mapping):
                raise AttestationFailure(CLAIM_MISMATCH, f"{where} is missing or not an object")
            check_claims(seen, want, where + ".")
            continue
        if seen is _MISSING:
            raise AttestationFailure(CLAIM_MISMATCH, f"{where} is missing")
        accepted = want if isinstance(want, list) else [want]
        # bool is an int in Python: compare types too, so `true` never matches `1`.
        if not any(type(seen) is type(a) and seen == a for a in accepted):
            raise AttestationFailure(CLAIM_MISMATCH, f"{where} is {seen!r}, expected "
                                     f"{want!r}")


def verify_token(token: str, keys: KeySet, expect: Expectations, nonce_hex: str,
                 observed_key_sha256: str | None, now: float) -> Verified:
    """Verify signature, issuer, times, nonce, required claims and the TLS key binding.

    `observed_key_sha256` is the SPKI hash seen in the handshake to the endpoint's URL (None
    skips the binding comparison, still requiring the claim). Raises AttestationFailure."""
    try:
        decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
    except (JoseError, ValueError, TypeError) as exc:
        raise _decode_failure(token, keys, exc) from None
    claims = decoded.claims
    if not isinstance(claims, dict):
        raise AttestationFailure(TOKEN_MALFORMED, "the token's payload is not a JSON object")
    if not isinstance(claims.get("iss"), str) or not hmac.compare_digest(
            claims["iss"].encode(), expect.issuer.encode()):
        raise AttestationFailure(ISSUER_MISMATCH, f"iss is {claims.get('iss')!r}, expected "
                                 f"{expect.issuer!r}")
    if not _is_time(claims.get("iat")) or not _is_time(claims.get("exp")):
        raise AttestationFailure(TOKEN_MALFORMED, "iat and exp must both be numeric dates")
    iat, exp = float(claims["iat"]), float(claims["exp"])
    leeway = expect.leeway_s
    if now >= exp + leeway:
        raise AttestationFailure(EXPIRED, f"expired {now - exp:.0f} s ago")
    if iat > now + leeway or (_is_time(claims.get("nbf")) and claims["nbf"] > now + leeway):
        raise AttestationFailure(NOT_YET_VALID, "issued in the future (check both clocks)")
    if now - iat > expect.max_age_s + leeway:
        raise AttestationFailure(TOO_OLD, f"issued {now - iat:.0f} s ago; max_age_s is "
                                 f"{expect.max_age_s:g}")
    nonce = claim_at(claims, expect.nonce_claim)
    if not _hex_equal(nonce, nonce_hex.lower()):
        raise AttestationFailure(NONCE_MISMATCH, f"{expect.nonce_claim} is not the nonce sent "
                                 "with this request (a replayed or foreign token)")
    check_claims(claims, expect.claims)
    bound = claim_at(claims, expect.key_claim)
    if not isinstance(bound, str) or len(bound) != 64:
        raise AttestationFailure(KEY_BINDING_MISSING, f"{expect.key_claim} is missing or not a "
                                 "hex SHA-256")
    bound = bound.lower()
    if observed_key_sha256 is not None and not _hex_equal(bound, observed_key_sha256.lower()):
        raise AttestationFailure(TLS_KEY_MISMATCH, f"the token binds key {bound[:16]}..., the "
                                 f"endpoint's TLS key is {observed_key_sha256[:16]}...")
    return Verified(bound, iat, min(exp, iat + expect.max_age_s), claims)


def _is_time(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _decode_failure(token: str, keys: KeySet, exc: Exception) -> AttestationFailure:
    from joserfc.errors import BadSignatureError, UnsupportedAlgorithmError
    from joserfc.jws import extract_compact

    try:
        header = extract_compact(token.encode()).protected
    except (JoseError, ValueError, TypeError):
        return AttestationFailure(TOKEN_MALFORMED, "not a compact JWS token")
    alg = header.get("alg")
    if alg not in ALGORITHMS or isinstance(exc, UnsupportedAlgorithmError):
        return AttestationFailure(ALGORITHM_NOT_ALLOWED, f"alg {alg!r} is not an accepted "
                                  "asymmetric signature algorithm")
    if isinstance(exc, BadSignatureError):
        return AttestationFailure(SIGNATURE_INVALID, "the signature does not verify against "
                                  "the issuer's keys")
    kid = header.get("kid")
    if kid is not None and kid not in {k.kid for k in keys.keys}:
        return AttestationFailure(UNKNOWN_KEY, f"kid {kid!r} is not in the issuer's key set")
    return AttestationFailure(SIGNATURE_INVALID, f"{type(exc).__name__}: the token does not "
                              "verify against the issuer's keys")


def load_jwks(data: Any) -> KeySet:
    """A JWKS document (parsed JSON) as a key set of public keys; ValueError if unusable."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise ValueError("a JWKS is an object with a non-empty 'keys' list")
    keys = [k for k in data["keys"] if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")]
    if not keys:
        raise ValueError("the JWKS has no RSA, EC or OKP keys")
    try:
        ks = KeySet.import_key_set({"keys": keys})
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"the JWKS does not load: {exc}") from None
    if any(k.is_private for k in ks.keys):
        raise ValueError("the JWKS holds a private key; publish only public keys")
    return ks


class AttestationStatus:
    """What the gateway currently trusts about one confidential endpoint (monotonic clock).

    Attested means: a token passed every check, it has not lapsed, and no check failed since.
    Any failure revokes at once; only a new verified token attests again."""

    __slots__ = ("endpoint", "attested_until", "key_sha256", "verified_at", "last_reason",
                 "last_detail", "failures", "generation")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.attested_until = 0.0  # monotonic; 0 = never attested or revoked
        self.key_sha256: str | None = None
        self.verified_at: float | None = None  # monotonic time of the last verified token
        self.last_reason: str | None = None
        self.last_detail: str | None = None
        self.failures: dict[str, int] = {}
        self.generation = 0  # bumped on every change of trust, so pinned connections can tell

    def attested(self, now: float) -> bool:
        """Whether private data may be sent to this endpoint at monotonic time `now`."""
        return now < self.attested_until

    def bound_key(self, now: float) -> str | None:
        """The TLS key hash connections must show, while attested."""
        return self.key_sha256 if now < self.attested_until else None

    def accept(self, verified: Verified, now: float, now_epoch: float) -> None:
        """Record a verified token (time bases: monotonic `now`, wall clock `now_epoch`)."""
        if verified.key_sha256 != self.key_sha256:
            self.generation += 1
        self.key_sha256 = verified.key_sha256
        self.verified_at = now
        self.attested_until = now + max(verified.valid_until - now_epoch, 0.0)
        self.last_reason = self.last_detail = None

    def revoke(self, reason: str, detail: str) -> None:
        """A check failed: un-attest now and count the reason."""
        self.attested_until = 0.0
        self.generation += 1
        self.last_reason, self.last_detail = reason, detail
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def age_s(self, now: float) -> float | None:
        """Seconds since the last verified token, or None if there never was one."""
        return None if self.verified_at is None else now - self.verified_at
