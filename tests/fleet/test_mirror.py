"""Publishing the TUF repository to mirrors: a directory behind a real nginx caching proxy
(the CDN) and an S3-compatible bucket (moto's server stands in for the cloud provider). The
server publishes after every release change and controller step; devices take metadata and
models from the mirror and reports go to the fleet API, which serves no model bytes."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from edgecloud.fleet.mirror import IMMUTABLE, cache_control
from edgecloud.supervise import ManagedProcess, free_port
from edgecloud.testing.nginx_cdn import NginxCDN
from tests.fleet.conftest import Rig, wait_for


def test_cache_headers_suit_tuf() -> None:
    assert cache_control("targets/models/m/1.0.0/ab12.m-1.0.0.gguf") == IMMUTABLE
    assert cache_control("metadata/7.snapshot.json") == IMMUTABLE
    assert cache_control("metadata/3.root.json") == IMMUTABLE
    assert cache_control("metadata/timestamp.json", 30) == "public, max-age=30"
    assert cache_control("metadata/root.json") == "no-cache"


def _same(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def test_the_server_publishes_every_change_and_devices_update_from_the_cdn(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(mirror=True)
    assert rig.cdn is not None
    repo_ts = rig.repo_path / "metadata/timestamp.json"
    mirror_ts = rig.mirror_dir / "metadata/timestamp.json"
    wait_for(lambda: _same(repo_ts, mirror_ts), what="the first publication")
    rig.copy_to_mirror = False  # only what the server publishes reaches the mirror
    d = rig.device("dev-a")
    d.run_once()
    assert d.active_version() == "1.0.0"
    # a release change while the server runs: published within a controller tick
    rig.publish("1.1.0", stable=True)
    wait_for(lambda: _same(repo_ts, mirror_ts), what="the release to reach the mirror")
    targets = sorted(p.name for p in (rig.mirror_dir / "targets").rglob("*.gguf"))
    assert len(targets) == 2
    d.run_once()
    assert d.active_version() == "1.1.0"
    # TUF's cache headers, through the edge
    with httpx.Client(base_url=rig.cdn.url, timeout=10) as c:
        ts = c.get("/metadata/timestamp.json")
        assert ts.headers["cache-control"] == "public, max-age=0"
        target = next((rig.mirror_dir / "targets").rglob("*1.1.0.gguf"))
        rel = target.relative_to(rig.mirror_dir).as_posix()
        first, again = c.get(f"/{rel}"), c.get(f"/{rel}")
        assert first.headers["cache-control"] == IMMUTABLE
        assert again.headers["x-cache-status"] == "HIT"
    # the fleet API served reports only: no metadata, no model byte
    requests = rig.status()["requests"]
    assert requests.get("targets", 0) == 0 and requests.get("metadata", 0) == 0
    assert requests["reports"] >= 2


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server, the stand-in for a cloud provider's bucket; its URL."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx not found: apt-get install -y nginx-light")
    pytest.importorskip("moto", reason="moto[server] is in the dev extra: pip install -e .[dev]")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    proc = ManagedProcess(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        f"{url}/moto-api/",
        env=dict(os.environ),
        log_path=str(tmp_path / "moto.log"),
        name="moto-s3",
    )
    with proc:
        import boto3

        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="fleet-tuf")
        # the CDN reads the bucket anonymously (as a public origin; a provider's CDN would
        # use its origin access identity instead): signed files need no secrecy
        public_read = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::fleet-tuf/*",
                }
            ],
        }
        client.put_bucket_policy(Bucket="fleet-tuf", Policy=json.dumps(public_read))
        yield url


def test_publishing_to_an_s3_bucket_behind_the_cdn(
    rig_factory: Callable[..., Rig], s3: str
) -> None:
    import boto3

    rig = rig_factory(server_args=("--mirror", "s3://fleet-tuf/prod", "--mirror-endpoint-url", s3))
    bucket = boto3.client("s3", endpoint_url=s3)
    repo_ts = (rig.repo_path / "metadata/timestamp.json").read_bytes()

    def published() -> bool:
        try:
            body = bucket.get_object(Bucket="fleet-tuf", Key="prod/metadata/timestamp.json")
        except bucket.exceptions.NoSuchKey:
            return False
        return bool(body["Body"].read() == repo_ts)

    wait_for(published, what="the bucket to hold the repository")
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="fleet-tuf")["Contents"]]
    target = next(k for k in keys if k.endswith(".gguf"))
    assert bucket.head_object(Bucket="fleet-tuf", Key=target)["CacheControl"] == IMMUTABLE
    ts = bucket.head_object(Bucket="fleet-tuf", Key="prod/metadata/timestamp.json")
    assert ts["CacheControl"] == "public, max-age=60"
    # the CDN in front of the bucket; a device installs through it
    rig.cdn = NginxCDN(upstream=f"{s3}/fleet-tuf/prod").start()
    d = rig.device("dev-s3")
    d.run_once()
    assert d.active_version() == "1.0.0"
    assert rig.status()["requests"].get("targets", 0) == 0


def test_publishing_writes_what_is_new_and_the_timestamp_last(tmp_path: Path) -> None:
    from edgecloud.fleet.mirror import DirectorySink, Publisher
    from edgecloud.fleet.repository import ModelRepository
    from tests.fleet.standin_node import dummy_model

    repo = ModelRepository.init(tmp_path / "repo")
    model = tmp_path / "m.gguf"
    model.write_bytes(dummy_model("1.0.0"))
    repo.add_model(model, "m", "1.0.0", stable=True)
    order: list[str] = []

    class Recording(DirectorySink):
        def put(self, key: str, source: Path, cache_control: str) -> None:
            order.append(key)
            super().put(key, source, cache_control)

    publisher = Publisher(tmp_path / "repo", [Recording(tmp_path / "mirror")])
    assert publisher.changed()
    first = publisher.publish()
    assert first == len(order) and order[-1] == "metadata/timestamp.json"
    assert order[0].startswith("targets/")  # bytes before the metadata that names them
    assert not publisher.changed()
    order.clear()
    assert publisher.publish() == 1 and order == ["metadata/timestamp.json"]  # nothing new
    # a fresh publisher (a new controller) finds the immutable files already there
    order.clear()
    Publisher(tmp_path / "repo", [Recording(tmp_path / "mirror")]).publish()
    assert order[-1] == "metadata/timestamp.json"
    assert all(cache_control(k) != IMMUTABLE for k in order)  # nothing immutable again
