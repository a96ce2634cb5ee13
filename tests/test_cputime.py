"""edgecloud.testing.cputime: another process's CPU time, to the nanosecond, children counted."""

from __future__ import annotations

import subprocess
import sys

import psutil

from edgecloud.testing.cputime import process_cpu_s, tree_cpu_s

# Spins until it has used 0.2 s of CPU (whatever else the machine runs), says so, then waits.
SPIN = ("import sys, time\nwhile time.process_time() < 0.2: pass\n"
        "print('spun', flush=True)\nsys.stdin.read()")


def _spinner(code: str = SPIN) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "spun\n"
    return proc


def test_a_process_cpu_time_in_nanoseconds_not_ticks() -> None:
    proc = _spinner()
    try:
        used = process_cpu_s(proc.pid)
        ticks = psutil.Process(proc.pid).cpu_times()
        assert 0.2 <= used < 0.2 + 0.1  # the interpreter's start counts too
        assert abs(used - (ticks.user + ticks.system)) <= 0.02 + 1e-9  # ticks of 10 ms
        assert used != round(used, 2)  # finer than a tick (one chance in 10 million)
    finally:
        proc.communicate("")


def test_a_tree_counts_live_children_and_nothing_for_a_process_gone() -> None:
    parent_code = ("import subprocess, sys\n"
                   f"child = subprocess.Popen([sys.executable, '-c', {SPIN!r}],"
                   " stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)\n"
                   "print(child.stdout.readline(), end='', flush=True)\n"
                   "sys.stdin.read()\nchild.communicate('')")
    proc = _spinner(parent_code)
    try:
        own = process_cpu_s(proc.pid)
        assert tree_cpu_s([proc.pid]) >= own + 0.2
    finally:
        proc.communicate("")
    assert tree_cpu_s([proc.pid]) == 0.0
