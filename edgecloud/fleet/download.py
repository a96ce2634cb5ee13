"""Resumable downloads of target files over HTTP Range, capped at the signed length.

Bytes go straight into a `.part` file next to their slot; an interrupted download continues
from the bytes already on disk. The bytes are hashed as they arrive, so a multi-GB model is
not read twice, and hashing and writing run on threads beside the network reads. Nothing here
decides trust: the caller compares the digest with the signed TUF target info.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from edgecloud.fleet.errors import TransferTooSlow, UpdateRefused
from edgecloud.fleet.transport import TransferLimits, within
from edgecloud.logs import log_event

log = logging.getLogger("edgecloud.fleet")


class _Worker:
    """A thread that applies `work` to each block it is handed, in order.

    An error stops the work but not the intake, so the receiver never blocks on a dead
    worker; `join` re-raises it in the caller's thread.
    """

    def __init__(self, name: str, work: Callable[[bytes], object]) -> None:
        self._work = work
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self._work(block)
                except BaseException as exc:  # noqa: BLE001 - re-raised by join()
                    self.error = exc

    def put(self, block: bytes) -> None:
        self._queue.put(block)

    def join(self) -> None:
        self._queue.put(None)
        self._thread.join()


class _Sink:
    """Writes chunks to the part file and hashes them, each on a thread of its own.

    The receive loop only gathers chunks into blocks, so network reads, hashing and disk
    writes run side by side (hashlib and file writes release the GIL). The writer also flushes
    the file to disk every `SYNC_EVERY` bytes, so the final fsync has little left to do.
    """

    SYNC_EVERY = 32 << 20
    # Chunks are handed over in blocks this big: one GIL hand-off per block, not per socket read.
    BLOCK = 4 << 20
    HOLD_S = 0.5

    def __init__(self, part: Path, offset: int) -> None:
        self.hasher = hashlib.sha256()
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        self.f = os.fdopen(fd, "r+b", buffering=0)
        left = offset
        while left > 0:  # a resumed download: hash what is already on disk
            block = self.f.read(min(1 << 20, left))
            if not block:
                break
            self.hasher.update(block)
            left -= len(block)
        self.f.seek(offset)
        self.f.truncate()
        self._unsynced = 0
        self._batch: list[bytes] = []
        self._batched = 0
        self._since = time.monotonic()
        self._closed = False
        self._workers = (
            _Worker("download-write", self._write),
            _Worker("download-hash", self.hasher.update),
        )

    def _write(self, block: bytes) -> None:
        self.f.write(block)
        self._unsynced += len(block)
        if self._unsynced >= self.SYNC_EVERY:
            os.fdatasync(self.f.fileno())
            self._unsynced = 0

    def write(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batched += len(chunk)
        # a slow link hands over at least every HOLD_S, so a killed download keeps its bytes
        if self._batched >= self.BLOCK or time.monotonic() - self._since > self.HOLD_S:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._batch:
            block = b"".join(self._batch)  # one copy, then one GIL hand-off per block
            self._batch.clear()
            self._batched = 0
            self._since = time.monotonic()
            for w in self._workers:
                if w.error is not None:
                    raise w.error
                w.put(block)

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._hand_over()
            finally:
                for w in self._workers:
                    w.join()

    def finish(self) -> str:
        """Wait for the threads, fsync, and return the sha256 of the whole file."""
        try:
            self._stop()
            for w in self._workers:
                if w.error is not None:
                    raise w.error
            os.fsync(self.f.fileno())
        finally:
            self.f.close()
        return self.hasher.hexdigest()

    def close(self) -> None:
        """Write what was received (a later run resumes from it) and close the file."""
        try:
            self._stop()
        finally:
            self.f.close()


def download_resumable(
    client: httpx.Client,
    url: str,
    part: Path,
    length: int,
    limits: TransferLimits | None = None,
) -> str:
    """Fetch `url` into `part` until it holds `length` bytes; returns the file's sha256.

    Raises UpdateRefused("target_too_long") as soon as the server sends more than `length`
    bytes (an endless-data attack), UpdateRefused("download_failed") on HTTP and transport
    errors, and UpdateRefused("download_too_slow" | "download_deadline") past `limits`.
    """
    limits = limits or TransferLimits()
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        part.unlink()
        have = 0
    if have == length:
        return _Sink(part, have).finish()
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have:
        log_event(log, "download.resume", url=url, offset=have, length=length)
    sink: _Sink | None = None
    try:
        with (
            within(limits),
            client.stream("GET", url, headers=headers, timeout=limits.timeout()) as resp,
        ):
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
    except TransferTooSlow as exc:
        raise UpdateRefused(
            exc.reason, f"{exc.detail}; {have} of {length} bytes, will resume"
        ) from None
    finally:
        if sink is not None and have < length:
            sink.close()
    if have < length:
        raise UpdateRefused("download_incomplete", f"{have} of {length} bytes; will resume")
    assert sink is not None
    return sink.finish()
