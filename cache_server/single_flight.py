"""One call per key at a time: concurrent callers with the same key share its result.

The call runs in a task of its own, not in the first caller's: a caller that gives up (its
deadline passes, its client disconnects) leaves, and the others still get the answer. Only
when every caller has left is the call cancelled, and a caller who comes after that starts a
fresh one rather than inheriting the cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar, cast

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0


def _retrieve(task: asyncio.Task[object]) -> None:
    """Marks an error as seen when every caller left before it came (no asyncio warning)."""
    if not task.cancelled():
        task.exception()


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[object]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            task: asyncio.Task[object] = asyncio.ensure_future(call())
            flight = self._flights[key] = _Flight(task)
            task.add_done_callback(_retrieve)
            landed = flight
            task.add_done_callback(lambda _: self._land(key, landed))
        flight.waiters += 1
        try:
            # shield: a caller cancelled here leaves the flight running for the others.
            return cast(T, await asyncio.shield(flight.task))
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Nobody waits any more: stop paying for it, and let the next caller start
                # afresh instead of joining a flight that is being cancelled.
                self._land(key, flight)
                flight.task.cancel()

    def _land(self, key: Hashable, flight: _Flight[object]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
