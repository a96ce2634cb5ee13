"""Gateway fixtures; the helpers live in gwrig.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.testing.redis_server import RedisServer, find_redis_server
from tests.gateway.gwrig import start_gateway, start_standin

__all__ = ["redis_server", "redis_url", "start_gateway", "start_standin"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the session (127.0.0.1, ephemeral port, no persistence)."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; CI installs it)")
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, flushed for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url
