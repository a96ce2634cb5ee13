"""Fetching a remote image URL, for hosts the operator allowed (none by default).

The node never follows redirects (a redirect could lead anywhere), never uses proxy settings
from the environment, stops reading at the byte limit and gives up at the time limit. Any
failure is a 400 that names the image; what the client sent is not fetched twice.
"""

from __future__ import annotations

import asyncio

import httpx

from edgecloud.node.errors import ImageFetchFailed, ImageLimitExceeded
from edgecloud.node.image_checks import ImageRef, RemoteImagePolicy


async def fetch_image(ref: ImageRef, policy: RemoteImagePolicy) -> bytes:
    """The bytes at `ref.url` (an allowed host), within the policy's size and time limits."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _download(ref, policy)
    except TimeoutError:
        raise ImageFetchFailed(
            f"{ref.where}: the image URL did not answer within {policy.timeout_s:g} s.",
            param=ref.param,
        ) from None
    except httpx.HTTPError as exc:
        raise ImageFetchFailed(
            f"{ref.where}: the image URL could not be fetched ({type(exc).__name__}).",
            param=ref.param,
        ) from None


async def _download(ref: ImageRef, policy: RemoteImagePolicy) -> bytes:
    limit = policy.max_bytes
    async with httpx.AsyncClient(
        follow_redirects=False, trust_env=False, timeout=policy.timeout_s
    ) as client:
        async with client.stream("GET", ref.url, headers={"accept": "image/*"}) as resp:
            if resp.status_code != 200:
                raise ImageFetchFailed(
                    f"{ref.where}: the image URL answered HTTP {resp.status_code} "
                    "(redirects are not followed).",
                    param=ref.param,
                )
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_big(ref, int(declared), limit)
            body = bytearray()
            async for piece in resp.aiter_bytes():
                body += piece
                if len(body) > limit:
                    raise _too_big(ref, len(body), limit)
    return bytes(body)


def _too_big(ref: ImageRef, n: int, limit: int) -> ImageLimitExceeded:
    return ImageLimitExceeded(
        f"{ref.where}: the image at the URL is over {limit} bytes ({n} or more).", param=ref.param
    )
