"""The three ways of applying load: closed loop, open loop (Poisson), bursts.

Each returns the records of the requests that finished; a `stop` event ends a level early
(Ctrl-C, or a target that is plainly broken) and in-flight requests are dropped.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecloud.bench.client import RequestSender
from edgecloud.bench.results import RequestRecord
from edgecloud.bench.schedule import poisson_schedule

# Kinds that mean "this target will not work", not "this target is overloaded".
FATAL_KINDS = frozenset({"connect", "http_401", "http_403", "http_404", "not_openai"})
_FATAL_AFTER = 4  # that many fatal failures and no success so far: stop the run

# Open loop: the pacer thread wakes this much before the schedule; handing the send over to
# the event loop takes about as long (latency still counts from the schedule).
_EARLY_S = 0.00005


@dataclass
class LevelOutcome:
    """What one load level produced."""

    level: float
    records: list[RequestRecord] = field(default_factory=list)
    started: float = 0.0  # perf_counter
    ended: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time over the level
    send_lag_ms: list[float] = field(default_factory=list)
    offered: float | None = None
    fatal: str | None = None  # error kind that stopped the run
    server_images: int = 0  # images the server says it read during the level
    image_ms: float | None = None  # their mean time, as the server reports it

    @property
    def duration_s(self) -> float:
        return max(self.ended - self.started, 0.0)


class _Collector:
    def __init__(self, out: LevelOutcome, stop: asyncio.Event, tick: Callable[[int], None]):
        self.out = out
        self.stop = stop
        self.tick = tick
        self.good = 0
        self.fatal = 0
        self.closed = False  # the level is over: late callbacks (dropped requests) are ignored

    def add(self, rec: RequestRecord) -> None:
        if self.closed:
            return
        self.out.records.append(rec)
        if rec.ok:
            self.good += 1
        elif rec.error in FATAL_KINDS:
            self.fatal += 1
            if self.good == 0 and self.fatal >= _FATAL_AFTER:
                self.out.fatal = rec.error
                self.stop.set()
        self.tick(len(self.out.records))


async def _run_until_stopped(work: asyncio.Future[Any], stop: asyncio.Event) -> None:
    stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (work, stopper):
            if not fut.done():
                fut.cancel()
        await asyncio.gather(work, stopper, return_exceptions=True)


async def _run_level(
    out: LevelOutcome, col: _Collector, work: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> LevelOutcome:
    """Run one level's `work` until it ends or `stop` is set; record its span and CPU time."""
    cpu0 = time.process_time()
    out.started = time.perf_counter()
    await _run_until_stopped(asyncio.ensure_future(work()), stop)
    col.closed = True
    out.ended = time.perf_counter()
    out.cpu_s = time.process_time() - cpu0
    return out


async def closed_loop(
    sender: RequestSender,
    bodies: Sequence[bytes],
    concurrency: int,
    *,
    count: int | None,
    duration_s: float | None,
    stop: asyncio.Event,
    tick: Callable[[int], None] = lambda n: None,
) -> LevelOutcome:
    """`concurrency` workers, each sending its next request as soon as the last one ended."""
    out = LevelOutcome(level=float(concurrency))
    col = _Collector(out, stop, tick)
    next_index = 0

    async def worker(deadline: float | None) -> None:
        nonlocal next_index
        while not stop.is_set():
            if count is not None and next_index >= count:
                return
            if deadline is not None and time.perf_counter() >= deadline:
                return
            i = next_index
            next_index += 1
            col.add(await sender.send(bodies[i % len(bodies)], out.level))

    async def workers() -> None:
        deadline = out.started + duration_s if duration_s else None
        await asyncio.gather(*(worker(deadline) for _ in range(concurrency)))

    return await _run_level(out, col, workers, stop)


async def open_loop(
    sender: RequestSender,
    bodies: Sequence[bytes],
    rate: float,
    *,
    count: int | None,
    duration_s: float | None,
    seed: int,
    stop: asyncio.Event,
    tick: Callable[[int], None] = lambda n: None,
) -> LevelOutcome:
    """Poisson arrivals at `rate`/s; sends follow the schedule whatever the server does."""
    offsets = poisson_schedule(rate, count=count, duration_s=duration_s, seed=seed)
    out = LevelOutcome(level=rate, offered=rate)
    col = _Collector(out, stop, tick)
    lags = out.send_lag_ms

    in_flight = 0
    dispatched_all = False
    all_done = asyncio.Event()
    loop = asyncio.get_running_loop()
    quit_pacer = threading.Event()

    def finished(rec: RequestRecord) -> None:
        nonlocal in_flight
        in_flight -= 1
        lags.append(round((rec.start_s - (rec.scheduled_s or 0.0)) * 1000.0, 4))
        col.add(rec)
        if in_flight == 0 and dispatched_all:
            all_done.set()

    def fire(i: int, when: float) -> None:
        nonlocal in_flight
        if stop.is_set():
            return
        in_flight += 1
        # Sends on an idle connection right here: no task, no extra hop through the loop.
        sender.submit(bodies[i % len(bodies)], rate, when, finished)

    def last_fired() -> None:
        nonlocal dispatched_all
        dispatched_all = True
        if in_flight == 0:
            all_done.set()

    def pacer(start: float) -> None:
        # The loop's timers tick in milliseconds; a thread's sleep is precise to tens of
        # microseconds, and handing the send to the loop costs about as much.
        for i, off in enumerate(offsets):
            when = start + off
            while True:
                left = when - time.perf_counter() - _EARLY_S
                if left <= 0 or quit_pacer.is_set():
                    break
                time.sleep(min(left, 0.05))
            if quit_pacer.is_set():
                return
            loop.call_soon_threadsafe(fire, i, when)
        loop.call_soon_threadsafe(last_fired)

    async def dispatch() -> None:
        thread = threading.Thread(
            target=pacer, args=(time.perf_counter() + 0.01,), name="bench-pacer", daemon=True
        )
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.0005))  # the pacer gets the GIL back quickly
        thread.start()
        try:
            await all_done.wait()
        finally:
            quit_pacer.set()
            sys.setswitchinterval(switch)

    return await _run_level(out, col, dispatch, stop)


async def bursts(
    sender: RequestSender,
    bodies: Sequence[bytes],
    size: int,
    *,
    count: int,
    gap_s: float,
    stop: asyncio.Event,
    tick: Callable[[int], None] = lambda n: None,
) -> LevelOutcome:
    """Rounds of `size` requests sent at once; the next round `gap_s` after the last ended."""
    out = LevelOutcome(level=float(size))
    col = _Collector(out, stop, tick)

    async def rounds() -> None:
        sent = 0
        while sent < count and not stop.is_set():
            n = min(size, count - sent)
            when = time.perf_counter()
            batch = [bodies[(sent + k) % len(bodies)] for k in range(n)]
            sent += n
            for rec in await asyncio.gather(*(sender.send(b, out.level, when) for b in batch)):
                col.add(rec)
            if sent < count:
                await asyncio.sleep(gap_s)

    return await _run_level(out, col, rounds, stop)
