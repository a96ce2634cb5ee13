"""The one seam to upstream servers: a keep-alive HTTP/1.1 pool per endpoint, and health probes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson

from edgecloud.gateway.attester import Attester
from edgecloud.gateway.health import EndpointState
from edgecloud.http1 import H1Pool, StreamedResponse

# What counts as "the endpoint failed before answering": retry on the next allowed endpoint.
# (UpstreamError, ssl.SSLError and socket errors are all OSErrors.)
TRANSPORT_ERRORS = (OSError, asyncio.TimeoutError)


class Upstream:
    """HTTP client for one endpoint: keep-alive pool, upstream key from env, probes."""

    def __init__(self, state: EndpointState, *, verify_tls: bool = True,
                 attester: Attester | None = None) -> None:
        self.state = state
        # A confidential endpoint: every connection pinned to the attested key, every request
        # refused while un-attested (attester.py).
        self.attester = attester
        cfg = state.config
        self.base = cfg.url
        self.root = cfg.url[:-3] if cfg.url.endswith("/v1") else cfg.url
        u = urlsplit(cfg.url)
        base_path = u.path.rstrip("/")
        self._query = f"?{u.query}".encode() if u.query else b""
        self._base_path = base_path.encode()
        self._root_path = (base_path[:-3] if base_path.endswith("/v1") else base_path).encode()
        self._targets: dict[str, bytes] = {}
        # identity: answers are relayed as received, without decompression
        headers = {"content-type": "application/json", "user-agent": "edgecloud-gateway",
                   "accept-encoding": "identity"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if key:
                headers["authorization"] = f"Bearer {key}"
        self._headers = headers
        self._probe_path = cfg.health_path
        self._verify_tls = verify_tls
        self.pool: H1Pool | None = None

    async def start(self) -> None:
        att = self.attester
        self.pool = H1Pool(self.base, self._headers,
                           connect_timeout_s=self.state.config.connect_timeout_s,
                           verify_tls=self._verify_tls,
                           ssl_context=None if att is None else att.ssl_context,
                           check_peer=None if att is None else att.check_peer)
        if att is not None:
            att.on_change(self._drop_connections)

    def _drop_connections(self) -> None:
        """Trust changed (re-keyed or revoked): no pooled connection outlives it."""
        if self.pool is not None:
            self.pool.close()

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _target(self, path: str) -> bytes:
        t = self._targets.get(path)
        if t is None:  # built once per route
            t = self._targets[path] = self._base_path + path.encode() + self._query
        return t

    async def request(self, path: str, body: bytes | Sequence[bytes | memoryview],
                      headers: dict[str, str] | None = None) -> StreamedResponse:
        """POST under the endpoint's base URL (path like /chat/completions); returns once the
        answer's status and headers are in. The caller bounds the wait (its read deadline).

        `headers` adds to the pool's (trace context, when tracing is on)."""
        assert self.pool is not None
        if self.attester is not None:
            self.attester.admit()
        return await self.pool.request(b"POST", self._target(path), body, headers)

    async def _get(self, target: bytes, timeout_s: float) -> tuple[int, bytes]:
        assert self.pool is not None
        if self.attester is not None:
            self.attester.admit()
        async with asyncio.timeout(timeout_s):
            resp = await self.pool.request(b"GET", target)
            return resp.status, await resp.read()

    async def probe(self, timeout_s: float = 2.0) -> bool:
        """One health probe: /readyz under the server root, else /v1/models. Updates state."""
        st = self.state
        if self.attester is not None and not self.attester.status.attested(time.monotonic()):
            return st.healthy  # nothing may connect while un-attested; health stays as known
        t0 = time.perf_counter()
        was_healthy = st.healthy
        try:
            if self._probe_path is None:
                status, _ = await self._get(self._root_path + b"/readyz", timeout_s)
                if status == 404:
                    self._probe_path = "/models"
                    status, _ = await self._get(self._target("/models"), timeout_s)
                else:
                    self._probe_path = "/readyz"
            else:
                if self._probe_path == "/models":
                    target = self._target("/models")
                else:
                    target = self._root_path + self._probe_path.encode()
                status, _ = await self._get(target, timeout_s)
            ok = status == 200
            if ok and st.discovery_due(time.monotonic(), was_healthy):
                await self.discover_model(timeout_s)
        except TRANSPORT_ERRORS as exc:
            ok = False
            st.last_error = type(exc).__name__
        else:
            if not ok:
                st.last_error = f"probe status {status}"
        now = time.monotonic()
        if ok:
            st.latency.observe_rtt(time.perf_counter() - t0)
            if was_healthy:
                st.breaker.probe_passed(now)
            else:
                # It was down and is back: the failures that opened the breaker were the outage
                # the probes already knew of, so they do not hold back its return.
                st.breaker.success()
        st.healthy = ok
        return ok

    async def discover_model(self, timeout_s: float = 2.0) -> str | None:
        """Learn the endpoint's model id and what it reads: configured, else from the first
        model it lists (`capabilities`, or edgecloud's `meta.capabilities`). Returns the model id
        (None: not known)."""
        st = self.state
        if st.config.model is not None:
            st.model_id = st.config.model
            if st.config.capabilities is not None:
                return st.model_id
        status, raw = await self._get(self._target("/models"), timeout_s)
        if status == 200:
            st.discovered_at = time.monotonic()
            try:
                data = orjson.loads(raw).get("data") or []
                first = data[0] if data else {}
                if st.config.model is None and isinstance(first.get("id"), str):
                    st.model_id = first["id"]  # a hot swap may have renamed it
                caps = first.get("capabilities") or (first.get("meta") or {}).get("capabilities")
                said = isinstance(caps, list) and all(isinstance(c, str) for c in caps)
                st.discovered_capabilities = tuple(caps) if said and caps else ()  # (): not said
                apis = first.get("apis")
                if isinstance(apis, list) and all(isinstance(a, str) for a in apis):
                    st.discovered_apis = tuple(apis)
            except (orjson.JSONDecodeError, AttributeError, IndexError, TypeError):
                pass
        return st.model_id
