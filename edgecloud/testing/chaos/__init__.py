"""Fault campaign building blocks: the stack, fault drivers, traffic and invariant checks.

`benchmarks/chaos.py` runs the whole campaign; `tests/chaos/test_chaos.py` runs a short one."""
