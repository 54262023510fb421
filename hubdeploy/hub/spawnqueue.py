"""An ordered wait for a slot to start a server, and a start's progress-aware clock.

Both live in the hub process and use only asyncio. One :class:`SpawnQueue` per hub
process (:func:`shared_queue`) is shared by every user's spawner: at most ``limit``
starts run at once; the others wait in the order they asked (FIFO), each able to say
how many starts are ahead of it.

A slot is handed straight from the start that releases it to the first in line, so a
later arrival can never overtake someone who is already waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class QueueTimeout(Exception):
    """A start waited longer than the queue allows; ``ahead`` starts were still ahead."""

    def __init__(self, waited: float, ahead: int):
        self.waited, self.ahead = waited, ahead
        super().__init__(f"still {ahead} starts ahead after waiting {waited:.0f} s")


class StartTimeout(Exception):
    """A start used up its time without progress (or reached its ceiling)."""


class Ticket:
    """One start's place: waiting in line, then holding a slot until :meth:`release`."""

    def __init__(self, queue: SpawnQueue, name: str):
        self.queue, self.name = queue, name
        self.entered = time.monotonic()
        self._granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._released = False

    @property
    def admitted(self) -> bool:
        return self._granted.done() and not self._granted.cancelled()

    @property
    def ahead(self) -> int:
        """How many starts must finish before this one gets its slot (0 once admitted)."""
        return self.queue.ahead(self)

    async def wait(self, timeout: float) -> None:
        """Wait for the slot; QueueTimeout after ``timeout`` s, leaving the line."""
        # asyncio.wait, not wait_for: wait_for swallows a cancellation that arrives in
        # the instant the slot is granted, and a stop must never be lost.
        try:
            await asyncio.wait({self._granted}, timeout=timeout)
        except asyncio.CancelledError:
            # A stop (or the hub's own timeout) while waiting: leave the line, or pass on
            # a slot that was granted in the same instant.
            self.release()
            raise
        if self.admitted:
            return
        ahead = self.ahead
        self.release()
        raise QueueTimeout(time.monotonic() - self.entered, ahead)

    def release(self) -> None:
        """Leave the line, or give the slot to the next in line. Idempotent."""
        if self._released:
            return
        self._released = True
        self.queue._leave(self)


class SpawnQueue:
    """At most ``limit`` starts at once; the rest wait in order."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"a spawn queue needs a limit of at least 1, not {limit}")
        self.limit = limit
        self.running: set[Ticket] = set()
        self.waiting: deque[Ticket] = deque()
        self._changed = asyncio.Event()
        # Called with (starting, waiting) after every change (the hub's metrics).
        self.on_change: Callable[[int, int], None] | None = None

    def enter(self, name: str) -> Ticket:
        """Take a place: a slot at once when one is free and nobody waits, else the line's end."""
        ticket = Ticket(self, name)
        if len(self.running) < self.limit and not self.waiting:
            self._grant(ticket)
        else:
            self.waiting.append(ticket)
        if self.on_change is not None:
            self.on_change(len(self.running), len(self.waiting))
        return ticket

    def ahead(self, ticket: Ticket) -> int:
        try:
            return self.waiting.index(ticket) + 1
        except ValueError:
            return 0

    async def changed(self, timeout: float) -> None:
        """Return when someone's position may have changed (or after ``timeout`` s)."""
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _grant(self, ticket: Ticket) -> None:
        self.running.add(ticket)
        ticket._granted.set_result(None)

    def _leave(self, ticket: Ticket) -> None:
        if ticket in self.running:
            self.running.discard(ticket)
        elif ticket in self.waiting:
            self.waiting.remove(ticket)
        while self.waiting and len(self.running) < self.limit:
            self._grant(self.waiting.popleft())
        self._notify()

    def _notify(self) -> None:
        # Wake every watcher once; the next change gets a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()
        if self.on_change is not None:
            self.on_change(len(self.running), len(self.waiting))


_QUEUE: SpawnQueue | None = None


def shared_queue(limit: int) -> SpawnQueue:
    """The hub process's one queue (its limit follows the configuration)."""
    global _QUEUE
    if _QUEUE is None:
        from hubdeploy.hub import metrics

        _QUEUE = SpawnQueue(limit)
        _QUEUE.on_change = metrics.observe
        metrics.observe(0, 0)
    elif _QUEUE.limit != limit:
        _QUEUE.limit = limit
    return _QUEUE


class StartClock:
    """A start's time: ``budget`` s from when its turn came, extended by another
    ``budget`` each time it runs out while the start still progresses, never past
    ``ceiling`` s in all. A budget written for an idle machine thus fails a start that
    is stuck, not one that is slow because the machine is busy."""

    def __init__(self, budget: float, ceiling: float, now: Callable[[], float] = time.monotonic):
        self.budget, self.now = budget, now
        self.started = now()
        self.ceiling = max(ceiling, budget)
        self.deadline = self.started + budget

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.now())

    def elapsed(self) -> float:
        return self.now() - self.started

    def extend(self) -> bool:
        """One more budget (capped at the ceiling); False when the ceiling is reached."""
        end = self.started + self.ceiling
        if self.budget <= 0 or self.deadline >= end:
            return False
        self.deadline = min(self.deadline + self.budget, end)
        return True


async def run_within(clock: StartClock, work: Awaitable[T], progressing: Callable[[], Awaitable[bool]],
                     what: str) -> T:
    """``work``'s result, or StartTimeout when the clock runs out and ``progressing()``
    says it does not progress (or the ceiling is reached); the work is then cancelled."""
    task: asyncio.Future[Any] = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=clock.remaining())
            if done:
                return task.result()
            if not await progressing():
                raise StartTimeout(f"{what}: no progress for {clock.budget:g} s")
            if not clock.extend():
                raise StartTimeout(f"{what}: still not done after {clock.elapsed():.0f} s, its ceiling")
    finally:
        if not task.done():
            task.cancel()
