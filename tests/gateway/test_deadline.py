"""Deadlines on one shared timer behave as asyncio.timeout_at does (gateway/deadline.py)."""

from __future__ import annotations

import asyncio

import pytest

from edgecloud.gateway.deadline import TICK_S, Deadlines


def run(coro: object) -> object:
    import uvloop

    return uvloop.run(coro)  # type: ignore[arg-type]


def test_a_wait_past_its_deadline_ends_in_timeout_error_soon_after() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        d = Deadlines()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            with d.at(t0 + 0.05) as guard:
                await asyncio.sleep(5)
        assert guard.expired()
        return loop.time() - t0

    took = run(main())
    # Not before the deadline (the loop clock counts whole milliseconds), at most a tick after.
    assert 0.049 <= took < 0.05 + TICK_S + 0.5  # type: ignore[operator]


def test_a_block_that_ends_in_time_is_left_alone() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = Deadlines()
        with d.at(loop.time() + 0.05) as guard:
            await asyncio.sleep(0.001)
        assert not guard.expired()
        await asyncio.sleep(0.15)  # past the deadline: nothing may cancel the task now

    run(main())


def test_moved_to_the_past_fires_on_the_next_turn_and_later_extends() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = Deadlines()
        with pytest.raises(TimeoutError):
            with d.at(loop.time() + 60) as guard:
                loop.call_later(0.01, guard.reschedule, 0.0)  # as a client that leaves does
                await asyncio.sleep(5)
        with d.at(loop.time() + 0.05) as guard:
            guard.reschedule(loop.time() + 60)
            await asyncio.sleep(0.15)
        assert not guard.expired()
        with pytest.raises(RuntimeError):
            guard.reschedule(0.0)  # not running any more

    run(main())


def test_a_cancel_from_outside_stays_a_cancel() -> None:
    async def waiter(d: Deadlines) -> None:
        with d.at(asyncio.get_running_loop().time() + 60):
            await asyncio.sleep(5)

    async def main() -> None:
        task = asyncio.ensure_future(waiter(Deadlines()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_deadlines_that_end_leave_no_pile_of_heap_entries() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        d = Deadlines()
        for _ in range(5000):
            with d.at(loop.time() + 60):
                await asyncio.sleep(0)
        return len(d._heap)

    assert run(main()) <= 65


def test_one_set_of_deadlines_serves_a_later_event_loop() -> None:
    """An app built once and run on two loops one after the other (tests do that)."""
    d = Deadlines()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            with d.at(loop.time() + 0.02):
                await asyncio.sleep(5)
        with d.at(loop.time() + 60):  # left armed: its loop ends with it pending
            pass

    run(main())
    run(main())
