"""Which `fleet serve` process runs the rollout controller: the one holding the lease.

On PostgreSQL the lease is a session advisory lock held on a connection of its own: exactly
one process holds it, and when that process dies its connection closes, the database frees
the lock, and the next process to try (every tick) takes over. SQLite is one process's
embedded database, so that process always holds the lease.
"""

from __future__ import annotations

import logging
import zlib

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from edgecloud.logs import log_event

log = logging.getLogger("edgecloud.fleet")

# a fixed 64-bit key in PostgreSQL's advisory lock space, derived from a name
LOCK_KEY = zlib.crc32(b"edgecloud.fleet.controller")


class ControllerLease:
    """`held()` is True while this process may run the controller (blocking: in a thread)."""

    def __init__(self, engine: Engine, key: int = LOCK_KEY) -> None:
        self.engine = engine
        self.key = key
        self.shared = engine.dialect.name == "postgresql"
        self._conn: Connection | None = None

    def held(self) -> bool:
        """Keep or try to take the lease; False when another process holds it."""
        if not self.shared:
            return True
        if self._conn is not None:
            try:  # still ours while our session lives (a session lock outlives commits)
                self._conn.execute(text("SELECT 1"))
                self._conn.commit()  # never left idle in a transaction
                return True
            except Exception:
                self._drop("lost")
                return False
        conn = self.engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
            conn.commit()
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        log_event(log, "controller.lease_taken")
        return True

    def _drop(self, why: str) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never back to the pool: the lock must go with the session
            except Exception:
                pass
        log_event(log, "controller.lease_" + why)

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self._conn.commit()
            finally:
                self._drop("released")
