"""TUF's network access on the agent's own HTTP client (python-tuf's `FetcherInterface`).

Every failure of the link (refused or dropped connection, a garbled answer, a timeout, a
trickle below the minimum rate) surfaces as a TUF `DownloadError`, also when it happens in
the middle of a body, so the updater never lets an HTTP library's exception escape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from edgecloud.fleet.download import TransferGuard, TransferLimits
from edgecloud.fleet.errors import TransferTooSlow


class HttpxFetcher(FetcherInterface):
    """Fetches TUF metadata and targets with `client`, within `limits`."""

    def __init__(self, client: httpx.Client, limits: TransferLimits) -> None:
        self.client = client
        self.limits = limits

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            request = self.client.build_request("GET", url, timeout=self.limits.timeout())
            resp = self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise tuf_exc.DownloadError(f"{url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            resp.close()
            raise tuf_exc.DownloadHTTPError(f"HTTP {resp.status_code} for {url}", resp.status_code)
        return self._chunks(url, resp)

    def _chunks(self, url: str, resp: httpx.Response) -> Iterator[bytes]:
        guard = TransferGuard(self.limits, time.monotonic())
        try:
            for chunk in resp.iter_bytes():
                guard.feed(len(chunk), time.monotonic())
                yield chunk
        except TransferTooSlow as exc:
            raise tuf_exc.SlowRetrievalError(f"{url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise tuf_exc.DownloadError(f"{url}: {type(exc).__name__}: {exc}") from None
        finally:
            resp.close()
