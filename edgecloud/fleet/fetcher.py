"""TUF's network access on the agent's own HTTP client (python-tuf's `FetcherInterface`).

Every failure of the link (refused or dropped connection, a garbled answer, a timeout, a
trickle below the minimum rate, in the headers or the body) surfaces as a TUF `DownloadError`,
also in the middle of a body, so the updater never lets an HTTP library's exception escape.
The client should come from `transport.agent_client`, which holds reads to the limits.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from edgecloud.fleet.errors import TransferTooSlow
from edgecloud.fleet.transport import TransferLimits, within


class HttpxFetcher(FetcherInterface):
    """Fetches TUF metadata and targets with `client`, within `limits`."""

    def __init__(self, client: httpx.Client, limits: TransferLimits) -> None:
        self.client = client
        self.limits = limits

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._stream(url)

    def _stream(self, url: str) -> Iterator[bytes]:
        try:
            with within(self.limits), self.client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise tuf_exc.DownloadHTTPError(
                        f"HTTP {resp.status_code} for {url}", resp.status_code
                    )
                yield from resp.iter_bytes()
        except TransferTooSlow as exc:
            raise tuf_exc.SlowRetrievalError(f"{url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise tuf_exc.DownloadError(f"{url}: {type(exc).__name__}: {exc}") from None
