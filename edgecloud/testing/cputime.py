"""The CPU time of other processes, to the nanosecond: what the benchmarks divide by the
requests a server answered.

psutil (like /proc/PID/stat) counts in clock ticks of 10 ms: 3,000 small requests at 60 µs each
are 18 ticks, so one tick more or less moves a per-request figure by 5% and a ratio of two of
them by up to 11%. The kernel keeps a CPU clock per process (clock_getcpuclockid) that counts in
nanoseconds, for all the process's threads, those that have exited included; it is read here
through libc. Where it cannot be read (not Linux, not our process), psutil's ticks are used.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterable

import psutil


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


_LIBC = _libc()


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far; psutil.NoSuchProcess if it
    is gone."""
    if _LIBC is not None:
        clock = ctypes.c_int()
        ts = _Timespec()
        if (_LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0
                and _LIBC.clock_gettime(clock, ctypes.byref(ts)) == 0):
            return ts.tv_sec + ts.tv_nsec / 1e9
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def tree_cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds used so far by these processes and their live children (nginx's workers,
    `--workers N`); a process that has gone counts for nothing."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += process_cpu_s(p)
    return total
