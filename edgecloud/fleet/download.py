"""Resumable downloads of target files over HTTP Range, capped at the signed length.

Bytes go straight into a `.part` file next to their slot; an interrupted download continues
from the bytes already on disk. Nothing here decides trust: the caller verifies the finished
file against the signed TUF target info.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from edgecloud.fleet.errors import UpdateRefused
from edgecloud.fleet.logs import log_event



def download_resumable(client: httpx.Client, url: str, part: Path, length: int) -> int:
    """Fetch `url` into `part` until it holds `length` bytes; returns the bytes fetched now.

    Raises UpdateRefused("target_too_long") as soon as the server sends more than `length`
    bytes (an endless-data attack), and UpdateRefused("download_failed") on HTTP errors.
    """
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        part.unlink()
        have = 0
    if have == length:
        return 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have:
        log_event("download.resume", url=url, offset=have, length=length)
    fetched = 0
    try:
        with client.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 200:
                have = 0  # the server ignored the range: start over
            elif resp.status_code == 206:
                start = resp.headers.get("content-range", "").removeprefix("bytes ").split("-")[0]
                if start != str(have):
                    raise UpdateRefused("download_failed", f"range answer starts at {start}")
            elif resp.status_code == 416:
                part.unlink(missing_ok=True)
                raise UpdateRefused("download_failed", "range not satisfiable; restarting")
            else:
                raise UpdateRefused("download_failed", f"HTTP {resp.status_code} for {url}")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.seek(have)
                f.truncate()
                for chunk in resp.iter_raw():
                    have += len(chunk)
                    fetched += len(chunk)
                    if have > length:
                        f.close()
                        part.unlink(missing_ok=True)  # the source is hostile: keep nothing
                        raise UpdateRefused(
                            "target_too_long", f"server sent over the signed {length} bytes"
                        )
                    f.write(chunk)
    except httpx.HTTPError as exc:
        raise UpdateRefused("download_failed", f"{type(exc).__name__}: {exc}") from None
    if have < length:
        raise UpdateRefused("download_incomplete", f"{have} of {length} bytes; will resume")
    return fetched
