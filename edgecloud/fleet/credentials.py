"""Fleet credentials: operator token, enrolment tokens and per-device credentials (pure).

A token is `PREFIX_ID.SECRET`: the id finds the stored record, the secret is checked against
its stored sha256 in constant time. Secrets are 256 random bits, so a plain sha256 is enough
(no password hashing needed) and nothing that is stored can be replayed as a credential.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass

ENROLMENT_PREFIX = "enr"
DEVICE_PREFIX = "dev"
MIN_OPERATOR_TOKEN = 16


def hash_secret(secret: str) -> str:
    """The stored form of a secret (hex sha256)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_secret(secret: str, stored_hash: str) -> bool:
    """Whether `secret` hashes to `stored_hash` (constant-time comparison)."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) stays on this machine, where plain http
    carries no credential over a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class IssuedToken:
    """A new token: `token` goes to its holder once; only `token_id` and `hash` are stored."""

    token: str
    token_id: str
    hash: str


def issue(prefix: str) -> IssuedToken:
    """A fresh random token with its id and stored hash."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return IssuedToken(f"{prefix}_{token_id}.{secret}", token_id, hash_secret(secret))


def split_token(token: str, prefix: str) -> tuple[str, str] | None:
    """(id, secret) of a token with `prefix`, or None when it is not one."""
    head, dot, secret = token.partition(".")
    if not dot or not secret or not head.startswith(prefix + "_"):
        return None
    token_id = head[len(prefix) + 1 :]
    if not token_id or len(token_id) > 32 or len(secret) > 128:
        return None
    return token_id, secret


def bearer(value: bytes | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header value."""
    if not value or value[:7].lower() != b"bearer ":
        return None
    try:
        return value[7:].decode("ascii").strip() or None
    except UnicodeDecodeError:
        return None


@dataclass
class EnrolmentToken:
    """A stored enrolment token: how many devices it may still enrol, until when, and which
    device id it is bound to (None: any id not enrolled yet)."""

    token_id: str
    hash: str
    uses_left: int
    expires_at: float
    device_id: str | None = None

    def usable(self, now: float | None = None) -> bool:
        return self.uses_left > 0 and (now if now is not None else time.time()) < self.expires_at


@dataclass(frozen=True)
class DeviceCredential:
    """A stored device credential, bound to one device id."""

    token_id: str
    hash: str
    device_id: str


class OperatorToken:
    """The operator's token, kept only as its hash."""

    def __init__(self, token: str) -> None:
        if len(token) < MIN_OPERATOR_TOKEN:
            raise ValueError(
                f"the operator token must have at least {MIN_OPERATOR_TOKEN} characters"
            )
        self._hash = hash_secret(token)

    def matches(self, given: str | None) -> bool:
        return given is not None and same_secret(given, self._hash)


class RateLimiter:
    """A token bucket per key: `rate` per second, bursts up to `burst` (pure: the clock is
    passed in). Keys idle long enough to be full again are forgotten."""

    def __init__(self, rate: float, burst: float, max_keys: int = 1_000_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> float:
        """0 when allowed; else the seconds until one more is allowed."""
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._forget_full(now)
        self._buckets[key] = (tokens - 1, now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        for k, (_, last) in list(self._buckets.items()):
            if now - last >= full_after:
                del self._buckets[k]
