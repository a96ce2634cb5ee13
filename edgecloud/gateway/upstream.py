"""The one seam to upstream servers: a pooled aiohttp session per endpoint, and health probes."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from typing import Any

import aiohttp
import orjson
import yarl

from edgecloud.gateway.health import BreakerState, EndpointState

# What counts as "the endpoint failed before answering": retry on the next allowed endpoint.
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class Upstream:
    """HTTP client for one endpoint: keep-alive pool, upstream key from env, probes."""

    def __init__(self, state: EndpointState, *, verify_tls: bool = True) -> None:
        self.state = state
        cfg = state.config
        self.base = cfg.url
        self.root = cfg.url[:-3] if cfg.url.endswith("/v1") else cfg.url
        self._urls: dict[str, yarl.URL] = {}
        # Explicit values stop aiohttp adding its own per request (skip_auto_headers copies the
        # headers every time); identity because answers are relayed without decompression.
        headers = {"content-type": "application/json", "user-agent": "edgecloud-gateway",
                   "accept-encoding": "identity"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if key:
                headers["authorization"] = f"Bearer {key}"
        self.headers = headers
        self._probe_path = cfg.health_path
        self._verify_tls = verify_tls
        self.session: aiohttp.ClientSession | None = None
        self._answer_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=cfg.connect_timeout_s, sock_read=cfg.timeout_s
        )

    async def start(self) -> None:
        cfg = self.state.config
        ctx: ssl.SSLContext | bool = True if self._verify_tls else False
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=60, ttl_dns_cache=300, ssl=ctx
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            # No sock_read: aiohttp would re-arm a timer for every chunk it reads. The
            # forwarder bounds the wait for headers and for each stretch of a stream instead.
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=cfg.connect_timeout_s, sock_read=None
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers=self.headers,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def post(self, path: str, body: bytes, stream: bool,
             headers: dict[str, str] | None = None) -> Any:
        """Start a POST (an awaitable aiohttp response context); path like /chat/completions.

        `headers` adds to the session's (trace context, when tracing is on). A non-streamed
        answer arrives in one or two reads, so aiohttp's own read timeout is cheap there;
        streams are bounded by the forwarder (see the session's timeout)."""
        assert self.session is not None
        url = self._urls.get(path)
        if url is None:  # parsed once per route: aiohttp would parse the string every time
            url = self._urls[path] = yarl.URL(self.base + path)
        if stream:
            return self.session.post(url, data=body, headers=headers)
        return self.session.post(url, data=body, headers=headers, timeout=self._answer_timeout)

    async def _get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        assert self.session is not None
        async with self.session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            return resp.status, await resp.read()

    async def probe(self, timeout_s: float = 2.0) -> bool:
        """One health probe: /readyz under the server root, else /v1/models. Updates state."""
        st = self.state
        t0 = time.perf_counter()
        try:
            if self._probe_path is None:
                status, _ = await self._get(self.root + "/readyz", timeout_s)
                if status == 404:
                    self._probe_path = "/models"
                    status, _ = await self._get(self.base + "/models", timeout_s)
                else:
                    self._probe_path = "/readyz"
            else:
                url = (self.base if self._probe_path == "/models" else self.root) + self._probe_path
                status, _ = await self._get(url, timeout_s)
            ok = status == 200
            if ok and st.model_id is None:
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
            # A successful probe after the breaker's wait is its half-open trial.
            if st.breaker.state is not BreakerState.CLOSED and st.breaker.allows(now):
                st.breaker.success()
        st.healthy = ok
        return ok

    async def discover_model(self, timeout_s: float = 2.0) -> None:
        """Learn the endpoint's model id: configured, else the first id it lists."""
        st = self.state
        if st.config.model is not None:
            st.model_id = st.config.model
            return
        status, raw = await self._get(self.base + "/models", timeout_s)
        if status == 200:
            try:
                data = orjson.loads(raw).get("data") or []
                if data and isinstance(data[0].get("id"), str):
                    st.model_id = data[0]["id"]
            except (orjson.JSONDecodeError, AttributeError):
                pass
