"""Poll until something holds, with a deadline: the rigs' one way to wait (never a bare sleep).

A child process that is ready when a URL answers is `edgecloud.supervise.ManagedProcess`'s
`wait_ready`; these are for everything else: a state settling, an event in a log, a TLS server
with a self-signed certificate.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def settle(check: Callable[[], list[str]], timeout_s: float, interval_s: float = 0.1
           ) -> tuple[float | None, list[str]]:
    """Poll `check` until it returns nothing; (seconds taken or None, what was left)."""
    t0 = time.monotonic()
    left = check()
    while left and time.monotonic() - t0 < timeout_s:
        time.sleep(interval_s)
        left = check()
    return (None if left else time.monotonic() - t0), left


def wait_until(holds: Callable[[], bool], timeout_s: float, what: str,
               interval_s: float = 0.1) -> float:
    """Poll `holds` until it is true; the seconds it took. TimeoutError naming `what` after
    `timeout_s`. An exception from `holds` ends the wait (a part that died, say)."""
    took, _ = settle(lambda: [] if holds() else [what], timeout_s, interval_s)
    if took is None:
        raise TimeoutError(f"{what}: not within {timeout_s:g} s")
    return took
