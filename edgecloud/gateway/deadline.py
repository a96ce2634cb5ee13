"""Upstream deadlines on one shared timer: asyncio.timeout_at's behaviour, not its cost.

Each upstream wait of the request path runs under a deadline. `asyncio.timeout_at` arms one
event-loop timer per deadline and cancels it at the end: on uvloop that costs about 4 µs per
request (a timer handle and a libuv timer each time), 5% of a small request's whole CPU. Here
the deadlines of one loop sit in a heap behind a single timer, armed for the earliest one and
moved only when an earlier one arrives (all requests to an endpoint share its timeout, so a new
deadline is almost always later than the armed one). Entering and leaving a deadline is a
heap push and a flag.

The semantics are asyncio.Timeout's: when the deadline passes the task is cancelled, and the
block's CancelledError leaves it as TimeoutError (unless someone else cancelled the task as
well); `reschedule(when)` moves it (to a time already past: it fires on the loop's next turn),
`expired()` says whether it fired. A deadline fires at most `TICK_S` late.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from types import TracebackType

TICK_S = 0.02  # how late a deadline may fire, at most: the timer is never armed closer than this

_ENTERED, _EXPIRING, _EXPIRED, _EXITED = range(4)


class Deadlines:
    """The running deadlines of one event loop, behind one timer."""

    __slots__ = ("_heap", "_seq", "_active", "_timer", "_timer_at", "_loop")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline, int]] = []
        self._seq = itertools.count()
        self._active = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None

    def at(self, when: float) -> Deadline:
        """A deadline at loop time `when`, to enter with `with` inside a task."""
        return Deadline(self, when)

    def _push(self, d: Deadline) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the first deadline, or this app now runs on another loop
            self._loop, self._heap, self._timer, self._timer_at = loop, [], None, float("inf")
        heap = self._heap
        heapq.heappush(heap, (d.when, next(self._seq), d, d.version))
        if len(heap) > 64 and len(heap) > 4 * self._active:
            # Entries of deadlines that ended or moved: drop them now and then (amortised O(1)).
            self._heap = heap = [e for e in heap if e[2].state == _ENTERED and e[3] == e[2].version]
            heapq.heapify(heap)
        if d.when < self._timer_at:
            self._arm(d.when)

    def _arm(self, when: float) -> None:
        loop = self._loop
        assert loop is not None  # set by _push
        when = max(when, loop.time() + TICK_S)
        if when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        assert self._loop is not None
        now = self._loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, d, version = heapq.heappop(heap)
            if version == d.version:
                d.fire()
        while heap and (heap[0][2].state != _ENTERED or heap[0][3] != heap[0][2].version):
            heapq.heappop(heap)  # ended or moved: no timer for them
        if heap:
            self._arm(heap[0][0])


class Deadline:
    """One wait's deadline; see the module doc. Use it once, with `with`, inside a task."""

    __slots__ = ("owner", "when", "version", "state", "_task", "_cancelling")

    def __init__(self, owner: Deadlines, when: float) -> None:
        self.owner = owner
        self.when = when
        self.version = 0
        self.state = -1  # not entered yet
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    def __enter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.state = _ENTERED
        self.owner._active += 1
        self.owner._push(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        state = self.state
        self.state = _EXITED if state == _ENTERED else _EXPIRED
        self.owner._active -= 1
        if state == _EXPIRING:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def fire(self) -> None:
        """The deadline passed: cancel the task (once)."""
        if self.state == _ENTERED:
            self.state = _EXPIRING
            assert self._task is not None
            self._task.cancel()

    def reschedule(self, when: float) -> None:
        """Move the deadline; a time already past fires it on the loop's next turn."""
        if self.state != _ENTERED:
            raise RuntimeError("the deadline is not running")
        self.when = when
        self.version += 1
        loop = asyncio.get_running_loop()
        if when <= loop.time():
            loop.call_soon(self.fire)
        else:
            self.owner._push(self)

    def expired(self) -> bool:
        """Whether the deadline fired."""
        return self.state in (_EXPIRING, _EXPIRED)
