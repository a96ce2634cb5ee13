"""Device enrolment on the fleet server: enrolment tokens in, per-device credentials out.

The operator issues an enrolment token (limited uses, an expiry, optionally bound to one
device id); a device spends one use to get its own credential, bound to its device id. Reports
are then accepted only with that credential and only for that device id. Tokens and credentials
are stored as hashes, in the database only: each report's check is one primary-key read and
one constant-time comparison, and every server process over the database agrees.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence

import httpx

from edgecloud.fleet.credentials import (
    DEVICE_PREFIX,
    ENROLMENT_PREFIX,
    DeviceCredential,
    EnrolmentToken,
    issue,
    same_secret,
    split_token,
)
from edgecloud.fleet.errors import CredentialError, FleetError
from edgecloud.fleet.state import FleetStore

MAX_TOKEN_USES = 100_000
MAX_TOKEN_TTL_S = 365 * 86400.0
_NO_HASH = "0" * 64


class DeviceRegistry:
    """Enrolled devices and their credentials, kept only in the database, so every server
    process over it agrees at once (blocking calls: run them in a thread)."""

    def __init__(
        self,
        store: FleetStore,
        max_devices: int,
        enrol_rate: float = 20.0,
        enrol_burst: float | None = None,
    ) -> None:
        self.store = store
        self.max_devices = max_devices
        self.enrol_rate = enrol_rate
        self.enrol_burst = enrol_burst if enrol_burst is not None else 5 * enrol_rate

    def __len__(self) -> int:
        return self.store.enrolled_count()

    def issue_token(self, device_id: str | None, uses: int, ttl_s: float) -> str:
        """A new enrolment token (shown once; only its hash is kept)."""
        if not 1 <= uses <= MAX_TOKEN_USES:
            raise CredentialError(f"uses must be 1..{MAX_TOKEN_USES}", 422, "invalid_uses")
        if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
            raise CredentialError("ttl_s must be positive and at most a year", 422, "invalid_ttl")
        new = issue(ENROLMENT_PREFIX)
        self.store.add_enrolment_token(
            EnrolmentToken(new.token_id, new.hash, uses, time.time() + ttl_s, device_id)
        )
        return new.token

    def check_token(self, token: str | None, device_id: str) -> EnrolmentToken:
        """The stored enrolment token that `token` proves, usable for `device_id`; raises
        CredentialError otherwise. One indexed read and a constant-time comparison, before
        the fleet-wide enrolment limit is charged, so garbage cannot use it up."""
        parts = split_token(token, ENROLMENT_PREFIX) if token else None
        stored = self.store.enrolment_token(parts[0]) if parts else None
        # compare against a stand-in hash when there is nothing stored: the same work either way
        known = same_secret(parts[1] if parts else "", stored.hash if stored else _NO_HASH)
        if parts is None or stored is None or not known:
            raise CredentialError("A valid enrolment token is required.", 401, "invalid_token")
        if not stored.usable():
            raise CredentialError("The enrolment token is used up or expired.", 401, "token_spent")
        if stored.device_id is not None and stored.device_id != device_id:
            raise CredentialError(
                f"This enrolment token is for another device, not {device_id}.",
                403,
                "device_mismatch",
            )
        return stored

    def enrol(self, token: str, device_id: str) -> str:
        """Spend one use of an enrolment token; the device's new credential (shown once).
        Raises CredentialError (EnrolmentLimited when the fleet-wide limit is spent)."""
        stored = self.check_token(token, device_id)
        # an open token may enrol new ids only; re-enrolling needs a token bound to the device
        replace = stored.device_id == device_id
        new = issue(DEVICE_PREFIX)
        self.store.enrol(
            stored.token_id,
            DeviceCredential(new.token_id, new.hash, device_id),
            replace,
            max_devices=self.max_devices,
            rate=self.enrol_rate,
            burst=self.enrol_burst,
        )
        return new.token

    def device_of(self, credential: str | None) -> str | None:
        """The device id a credential belongs to, or None when it is not a valid one."""
        return self.devices_of([credential])[0]

    def devices_of(self, credentials: Sequence[str | None]) -> list[str | None]:
        """`device_of` for a group of reports in one database read. Nothing is cached: a
        device enrolled on any process is accepted at once, and a re-enrolled device's old
        credential stops working everywhere at once."""
        parts = [split_token(c, DEVICE_PREFIX) if c else None for c in credentials]
        stored = self.store.credentials_by_id(sorted({p[0] for p in parts if p}))
        out: list[str | None] = []
        for p in parts:
            cred = stored.get(p[0]) if p else None
            ok = p is not None and cred is not None and same_secret(p[1], cred.hash)
            out.append(cred.device_id if ok and cred is not None else None)
        return out


def request_enrolment_token(
    server: str,
    operator_token: str | None,
    *,
    device_id: str | None = None,
    uses: int = 1,
    ttl_s: float = 86400.0,
    verify: ssl.SSLContext | bool = True,
) -> str:
    """Ask a running fleet server for an enrolment token (the operator's call)."""
    headers = {"authorization": f"Bearer {operator_token}"} if operator_token else {}
    body = {"device_id": device_id, "uses": uses, "ttl_s": ttl_s}
    try:
        r = httpx.post(
            f"{server.rstrip('/')}/v1/fleet/enrolment-tokens",
            json=body,
            headers=headers,
            timeout=30,
            verify=verify,
        )
    except httpx.HTTPError as exc:
        raise FleetError(f"cannot reach the fleet server {server}: {exc}") from None
    if r.status_code != 201:
        try:
            message = r.json()["error"]["message"]
        except Exception:
            message = r.text[:200]
        raise FleetError(f"the fleet server refused (HTTP {r.status_code}): {message}")
    return str(r.json()["token"])
