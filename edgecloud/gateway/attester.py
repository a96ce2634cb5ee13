"""Keeps one confidential endpoint attested: fetch evidence with a fresh nonce, verify it, bind
the TLS key, re-attest before expiry in the background, and pin every upstream connection.

I/O lives here; the checks are attestation_checks.py's (pure). Nothing on a request's path
waits for this module except `check_peer` (a hash compare on each new connection) and
`AttestationStatus` reads.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from joserfc.jwk import KeySet
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgecloud.gateway import attestation_checks as at
from edgecloud.gateway.attestation_checks import (
    AttestationFailure,
    AttestationStatus,
    Expectations,
)
from edgecloud.gateway.config import ConfidentialConfig
from edgecloud.gateway.health import EndpointState
from edgecloud.logs import log_event
from edgecloud.retry import backoff_s

_JWKS_CACHE_S = 600.0  # refetch the issuer's keys this often (and at once for an unknown kid)
_MAX_TOKEN_BYTES = 64 * 1024

_events = logging.getLogger("edgecloud.gateway")


class ConfidentialRefused(OSError):
    """A connection or request to a confidential endpoint that is not (or no longer) trusted.
    An OSError, so the forwarder treats it as a transport failure and tries the next endpoint."""


def endpoint_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """TLS for a confidential endpoint. Without a CA file the certificate may be self-signed:
    trust comes from the key pin (the token vouches for the key), checked after the handshake."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=ca_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_key_sha256(ssl_object: Any) -> str | None:
    """The SPKI hash of the peer certificate of a TLS connection (ssl.SSLObject), or None."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    try:
        return at.spki_sha256(der) if der else None
    except ValueError:  # a certificate we cannot parse binds nothing
        return None


class Attester:
    """Attestation of one endpoint; `status` is what policy and connections read."""

    def __init__(self, name: str, url: str, cfg: ConfidentialConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.status = AttestationStatus(name)
        u = urlsplit(url)
        self.host = u.hostname or ""
        self.port = u.port or 443
        self.expect = Expectations(cfg.issuer, cfg.claims, cfg.max_age_s, cfg.nonce_claim,
                                   cfg.key_claim)
        self.ssl_context = endpoint_ssl_context(cfg.ca_file)
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self.attempts = 0

    # -- read on the request path ---------------------------------------------------------------
    def check_peer(self, transport: asyncio.BaseTransport) -> None:
        """Called on each new connection after the TLS handshake, before any byte is sent:
        refuse unless attested and the peer's key is the bound key (else un-attest)."""
        now = time.monotonic()
        bound = self.status.bound_key(now)
        if bound is None:
            raise ConfidentialRefused(f"{self.name} is not attested; nothing is sent to it")
        seen = peer_key_sha256(transport.get_extra_info("ssl_object"))
        if seen != bound:
            self._fail(AttestationFailure(
                at.TLS_KEY_CHANGED, f"a new connection showed TLS key {(seen or 'none')[:16]}..., "
                f"not the attested {bound[:16]}..."))
            raise ConfidentialRefused(f"{self.name} presented a TLS key other than the attested "
                                      "one; un-attested")

    def admit(self) -> None:
        """Called before each request is written: refuse unless attested right now (a token may
        lapse between placement and sending)."""
        if not self.status.attested(time.monotonic()):
            raise ConfidentialRefused(f"{self.name} is not attested; nothing is sent to it")

    def on_change(self, fn: Callable[[], None]) -> None:
        """Call `fn` whenever trust changes (attested, re-keyed, revoked): e.g. drop pooled
        connections."""
        self._listeners.append(fn)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Attest once (bounded by the timeouts), then keep attesting in the background."""
        await self.attest_once()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _next_delay(self, failures_in_a_row: int) -> float:
        now = time.monotonic()
        st = self.status
        if st.attested(now):
            remaining = st.attested_until - now
            span = st.attested_until - (st.verified_at or now)
            # Renew with a quarter of the token's life left (at least 2 s), so that a slow
            # verifier never lets a healthy endpoint lapse.
            return max(remaining - max(span / 4, 2.0), 0.05)
        # Un-attested: retry with backoff, never slower than a tenth of the token's life.
        cap = max(1.0, self.cfg.max_age_s / 10)
        return min(backoff_s(1.0, failures_in_a_row, 30.0), cap)

    async def _loop(self) -> None:
        in_a_row = 0 if self.status.attested(time.monotonic()) else 1
        while True:
            await asyncio.sleep(self._next_delay(max(in_a_row - 1, 0)))
            in_a_row = 0 if await self.attest_once() else in_a_row + 1

    # -- one attestation ------------------------------------------------------------------------
    async def attest_once(self) -> bool:
        """Fetch and verify a fresh token; True if the endpoint is attested afterwards."""
        self.attempts += 1
        nonce = secrets.token_hex(32)
        try:
            observed = await self._observe_key()
            token = await self._evidence(nonce)
            keys = await self._jwks()
            try:
                verified = at.verify_token(token, keys, self.expect, nonce, observed, time.time())
            except AttestationFailure as exc:
                if exc.reason != at.UNKNOWN_KEY or self.cfg.jwks_url is None:
                    raise
                keys = await self._jwks(refresh=True)  # the issuer may have rotated its keys
                verified = at.verify_token(token, keys, self.expect, nonce, observed, time.time())
        except AttestationFailure as exc:
            self._fail(exc)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other surprise must fail closed too
            self._fail(AttestationFailure(at.EVIDENCE_INVALID, f"{type(exc).__name__}: {exc}"))
            return False
        changed = verified.key_sha256 != self.status.key_sha256 or not self.status.attested(
            time.monotonic())
        self.status.accept(verified, time.monotonic(), time.time())
        if changed:
            self._notify()
        # (spki_sha256: a public key's hash; a field named *key* would be redacted as a secret)
        log_event(_events, "attestation.ok", endpoint=self.name,
                  spki_sha256=verified.key_sha256,
                  valid_s=round(self.status.attested_until - time.monotonic(), 1))
        return True

    def _fail(self, exc: AttestationFailure) -> None:
        was = self.status.attested(time.monotonic())
        self.status.revoke(exc.reason, exc.detail)
        self._notify()
        log_event(_events, "attestation.failed", logging.WARNING, endpoint=self.name,
                  check=exc.reason, detail=exc.detail, was_attested=was)

    def _notify(self) -> None:
        for fn in self._listeners:
            fn()

    async def _observe_key(self) -> str:
        """The SPKI hash the endpoint's URL shows in a TLS handshake right now."""
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                _, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl_context, server_hostname=self.host)
        except (OSError, TimeoutError) as exc:
            raise AttestationFailure(at.TLS_HANDSHAKE_FAILED, f"TLS to {self.host}:{self.port}: "
                                     f"{type(exc).__name__}") from None
        try:
            key = peer_key_sha256(writer.get_extra_info("ssl_object"))
        finally:
            writer.close()
        if key is None:
            raise AttestationFailure(at.TLS_HANDSHAKE_FAILED, "the endpoint showed no certificate")
        return key

    async def _evidence(self, nonce: str) -> str:
        verify: ssl.SSLContext | bool = self.ssl_context  # the token, not the channel, is trusted
        try:
            async with httpx.AsyncClient(verify=verify, timeout=self.cfg.timeout_s) as client:
                async with asyncio.timeout(self.cfg.timeout_s):
                    resp = await client.get(self.cfg.evidence_url, params={"nonce": nonce})
        except (TimeoutError, httpx.TimeoutException):
            raise AttestationFailure(at.EVIDENCE_TIMEOUT, f"no evidence within "
                                     f"{self.cfg.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise AttestationFailure(at.EVIDENCE_UNREACHABLE, type(exc).__name__) from None
        if resp.status_code != 200:
            raise AttestationFailure(at.EVIDENCE_UNREACHABLE, f"HTTP {resp.status_code}")
        if len(resp.content) > _MAX_TOKEN_BYTES:
            raise AttestationFailure(at.EVIDENCE_INVALID, "the evidence answer is too large")
        try:
            token = orjson.loads(resp.content).get("token")
        except (orjson.JSONDecodeError, AttributeError):
            token = None
        if not isinstance(token, str):
            raise AttestationFailure(at.EVIDENCE_INVALID, 'expected {"token": "<JWT>"}')
        return token

    async def _jwks(self, refresh: bool = False) -> KeySet:
        now = time.monotonic()
        if self._keys is not None and not refresh and now - self._keys_at < _JWKS_CACHE_S:
            return self._keys
        if self.cfg.jwks_file is not None:
            data = await asyncio.to_thread(Path(self.cfg.jwks_file).read_bytes)
        else:
            assert self.cfg.jwks_url is not None
            try:
                async with httpx.AsyncClient(timeout=self.cfg.timeout_s) as client:
                    async with asyncio.timeout(self.cfg.timeout_s):
                        resp = await client.get(self.cfg.jwks_url)
            except (TimeoutError, httpx.HTTPError) as exc:
                raise AttestationFailure(at.JWKS_UNREACHABLE, type(exc).__name__) from None
            if resp.status_code != 200:
                raise AttestationFailure(at.JWKS_UNREACHABLE, f"HTTP {resp.status_code}")
            data = resp.content
        try:
            keys = at.load_jwks(orjson.loads(data))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise AttestationFailure(at.JWKS_INVALID, str(exc)) from None
        self._keys, self._keys_at = keys, now
        return keys


class AttestationCollector(Collector):
    """/metrics: attestation state and age per endpoint, failures by reason."""

    def __init__(self, attesters: Sequence[Attester]) -> None:
        self.attesters = attesters

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        p = "edgecloud_gateway_attestation_"
        state = GaugeMetricFamily(p + "attested", "1 while the endpoint's attestation is valid",
                                  labels=["endpoint"])
        age = GaugeMetricFamily(p + "age_seconds", "seconds since the last verified token "
                                "(-1: never)", labels=["endpoint"])
        left = GaugeMetricFamily(p + "valid_seconds", "seconds the attestation has left",
                                 labels=["endpoint"])
        failures = CounterMetricFamily(p + "failures", "attestation failures by failed check",
                                       labels=["endpoint", "reason"])
        now = time.monotonic()
        for a in self.attesters:
            st = a.status
            state.add_metric([a.name], 1.0 if st.attested(now) else 0.0)
            a_s = st.age_s(now)
            age.add_metric([a.name], -1.0 if a_s is None else a_s)
            left.add_metric([a.name], max(st.attested_until - now, 0.0))
            for reason, n in sorted(st.failures.items()):
                failures.add_metric([a.name, reason], float(n))
        yield from (state, age, left, failures)


def attesters_for(states: Sequence[EndpointState]) -> dict[str, Attester]:
    """An attester per confidential endpoint, wired into its state (read by policy)."""
    out: dict[str, Attester] = {}
    for st in states:
        cc = st.config.confidential
        if cc is not None:
            att = out[st.name] = Attester(st.name, st.config.url, cc)
            st.attestation = att.status
    return out
