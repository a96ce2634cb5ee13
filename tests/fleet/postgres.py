"""The PostgreSQL fixture helper: a throwaway server (edgecloud.testing.postgres), or a skip
that says what to install."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator

import pytest

from edgecloud.testing.postgres import PASSWORD, USER, PostgresServer, find_bin_dir

__all__ = ["PASSWORD", "USER", "PostgresServer", "postgres_server"]


def postgres_server() -> Iterator[PostgresServer]:
    """A started server for a fixture, stopped afterwards."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: "
            "apt-get install -y postgresql (Debian/Ubuntu) to run the PostgreSQL tests"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run initdb as")
    server = PostgresServer(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()
