"""Resumable downloads of target files over HTTP Range, capped at the signed length.

Bytes go straight into a `.part` file next to their slot; an interrupted download continues
from the bytes already on disk. The bytes are hashed as they arrive, so a multi-GB model is
not read twice. Nothing here decides trust: the caller compares the digest with the signed
TUF target info.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from edgecloud.fleet.errors import UpdateRefused
from edgecloud.fleet.logs import log_event


class _Sink:
    """Writes chunks to the part file and hashes them as they pass (one read of the bytes)."""

    def __init__(self, part: Path, offset: int) -> None:
        self.hasher = hashlib.sha256()
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        self.f = os.fdopen(fd, "r+b")
        left = offset
        while left > 0:  # a resumed download: hash what is already on disk
            block = self.f.read(min(1 << 20, left))
            if not block:
                break
            self.hasher.update(block)
            left -= len(block)
        self.f.seek(offset)
        self.f.truncate()

    def write(self, chunk: bytes) -> None:
        self.f.write(chunk)
        self.hasher.update(chunk)

    def finish(self) -> str:
        """Flush, fsync, and return the sha256 of the whole file."""
        self.f.flush()
        os.fsync(self.f.fileno())
        self.close()
        return self.hasher.hexdigest()

    def close(self) -> None:
        self.f.close()


def download_resumable(client: httpx.Client, url: str, part: Path, length: int) -> str:
    """Fetch `url` into `part` until it holds `length` bytes; returns the file's sha256.

    Raises UpdateRefused("target_too_long") as soon as the server sends more than `length`
    bytes (an endless-data attack), and UpdateRefused("download_failed") on HTTP errors.
    """
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        part.unlink()
        have = 0
    if have == length:
        return _Sink(part, have).finish()
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have:
        log_event("download.resume", url=url, offset=have, length=length)
    sink: _Sink | None = None
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
            sink = _Sink(part, have)
            for chunk in resp.iter_raw():
                have += len(chunk)
                if have > length:
                    sink.close()
                    part.unlink(missing_ok=True)  # the source is hostile: keep nothing
                    raise UpdateRefused(
                        "target_too_long", f"server sent over the signed {length} bytes"
                    )
                sink.write(chunk)
    except httpx.HTTPError as exc:
        raise UpdateRefused("download_failed", f"{type(exc).__name__}: {exc}") from None
    finally:
        if sink is not None and have < length:
            sink.close()
    if have < length:
        raise UpdateRefused("download_incomplete", f"{have} of {length} bytes; will resume")
    assert sink is not None
    return sink.finish()
