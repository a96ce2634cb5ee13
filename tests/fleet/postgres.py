"""The PostgreSQL fixture helper: a throwaway server (edgecloud.testing.postgres), or a skip
that says what to install."""

from __future__ import annotations

from edgecloud.testing.postgres import PASSWORD, USER, PostgresServer, postgres_server

__all__ = ["PASSWORD", "USER", "PostgresServer", "postgres_server"]
