"""Publishing the TUF repository to mirrors: a plain directory (served by a web server or a
CDN) or an S3-compatible bucket, so model bytes and metadata reach devices without passing
through the fleet API.

TUF is built for untrusted mirrors: the agent verifies everything it fetches against its
trusted root, so a mirror that serves stale, replayed, garbled or swapped files is refused
exactly as the fleet server would be. With consistent snapshots every target and every
versioned metadata file is immutable (its name holds its hash or version), so a cache may keep
it forever; only `timestamp.json` changes in place and needs a short cache lifetime.

Publishing copies targets first, then versioned metadata, then `timestamp.json` last, so a
device never sees a timestamp naming files the mirror does not have yet.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from edgecloud.fleet.errors import FleetError

IMMUTABLE = "public, max-age=31536000, immutable"
TIMESTAMP_MAX_AGE_S = 60  # how stale a cached timestamp.json may be; a device polls far slower


class MirrorError(FleetError):
    """A mirror cannot be written (bad destination, bucket refused, disk full)."""


def cache_control(key: str, timestamp_max_age_s: int = TIMESTAMP_MAX_AGE_S) -> str:
    """The Cache-Control a mirror or CDN should send for a repository file (`metadata/...` or
    `targets/...`): immutable for targets and versioned metadata, short for the timestamp,
    no-cache for anything named without a version."""
    name = key.rsplit("/", 1)[-1]
    if key.startswith("targets/"):
        return IMMUTABLE
    if name == "timestamp.json":
        return f"public, max-age={timestamp_max_age_s}"
    if name.split(".", 1)[0].isdigit():
        return IMMUTABLE
    return "no-cache"


def content_type(key: str) -> str:
    return "application/json" if key.endswith(".json") else "application/octet-stream"


class MirrorSink(Protocol):
    """Where a repository is published: `has` to skip immutable files already there."""

    name: str

    def has(self, key: str) -> bool: ...

    def put(self, key: str, source: Path, cache_control: str) -> None: ...


class DirectorySink:
    """A plain directory (`metadata/`, `targets/`) for a web server or CDN origin; each file
    is written to a temp name and renamed, so readers never see half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"file://{root}"

    def has(self, key: str) -> bool:
        return (self.root / key).is_file()

    def put(self, key: str, source: Path, cache_control: str) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".publish-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class S3Sink:
    """An S3-compatible bucket (AWS S3, MinIO, Ceph, R2, GCS's XML API...) through boto3;
    credentials come from boto3's usual places (environment, profile, instance role)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.name = f"s3://{bucket}/{self.prefix}"
        # path-style URLs for other S3-compatible services: no wildcard DNS needed there
        style = "path" if endpoint_url else "auto"
        config = Config(s3={"addressing_style": style}, retries={"mode": "standard"})
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url, config=config)

    def has(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise MirrorError(f"{self.name}: {exc}") from None
        return True

    def put(self, key: str, source: Path, cache_control: str) -> None:
        self.client.upload_file(
            str(source),
            self.bucket,
            self.prefix + key,
            ExtraArgs={"CacheControl": cache_control, "ContentType": content_type(key)},
        )


def open_sink(destination: str, endpoint_url: str | None = None) -> MirrorSink:
    """A sink for `DIR`, `file:///DIR` or `s3://BUCKET[/PREFIX]`."""
    parsed = urlparse(destination)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise MirrorError(f"{destination}: an S3 mirror is s3://BUCKET[/PREFIX]")
        return S3Sink(parsed.netloc, parsed.path, endpoint_url)
    if parsed.scheme in ("", "file"):
        return DirectorySink(Path(parsed.path if parsed.scheme else destination))
    raise MirrorError(f"{destination}: a mirror is a directory, file:///DIR or s3://BUCKET")


def _files(repo: Path, folder: str) -> Iterator[tuple[str, Path]]:
    base = repo / folder
    for path in sorted(base.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            yield f"{folder}/{path.relative_to(base).as_posix()}", path


@dataclass
class Publisher:
    """Publishes a repository to its sinks, skipping immutable files each sink already has
    (remembered, so a tick that changed only the timestamp uploads one file)."""

    repo: Path
    sinks: list[MirrorSink]
    timestamp_max_age_s: int = TIMESTAMP_MAX_AGE_S
    _done: dict[str, set[str]] = field(default_factory=dict)
    _timestamp: bytes = b""

    def changed(self) -> bool:
        """Whether timestamp.json differs from the one published last (every signed change
        makes a new timestamp)."""
        ts = self.repo / "metadata" / "timestamp.json"
        return _digest(ts) != self._timestamp

    def publish(self) -> int:
        """Publish what is new to every sink (blocking I/O); the number of files written."""
        ts = self.repo / "metadata" / "timestamp.json"
        digest = _digest(ts)
        written = 0
        for sink in self.sinks:
            done = self._done.setdefault(sink.name, set())
            immutable = [*_files(self.repo, "targets"), *_files(self.repo, "metadata")]
            for key, path in immutable:
                if key == "metadata/timestamp.json" or key in done:
                    continue
                if cache_control(key) == IMMUTABLE and sink.has(key):
                    done.add(key)
                    continue
                sink.put(key, path, cache_control(key, self.timestamp_max_age_s))
                written += 1
                if cache_control(key) == IMMUTABLE:
                    done.add(key)
            if ts.is_file():  # last: it names the snapshot, which names everything above
                sink.put(
                    "metadata/timestamp.json",
                    ts,
                    cache_control("metadata/timestamp.json", self.timestamp_max_age_s),
                )
                written += 1
        self._timestamp = digest
        return written


def _digest(path: Path) -> bytes:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except FileNotFoundError:
        return b""
