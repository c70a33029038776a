"""One call per key at a time: concurrent callers with the same key share it.

Two shapes of sharing, one mechanism. `run` shares a result: every caller awaits the same
answer. `follow` shares a flight of events (the chunks of a stream, then the end): every caller
follows them from the first, so one who joins late still gets them all.

The call runs in a task of its own, not in the first caller's: a caller that gives up (its
deadline passes, its client disconnects) leaves, and the others still get the answer. Only
when every caller has left is the call cancelled, and a caller who comes after that starts a
fresh one rather than inheriting the cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar, cast

log = logging.getLogger(__name__)
T = TypeVar("T")
E = TypeVar("E")


class Broadcast(Generic[E]):
    """Events of one flight, in order, for every follower from the first event on."""

    def __init__(self) -> None:
        self.events: list[E] = []
        self.done = False
        self._changed = asyncio.Event()

    def publish(self, event: E) -> None:
        self.events.append(event)
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[E]:
        seen = 0
        while True:
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self.done:
                return
            await self._changed.wait()


class _Flight:
    __slots__ = ("broadcast", "task", "waiters")

    def __init__(self, task: asyncio.Task[Any], broadcast: Broadcast[Any] | None) -> None:
        self.task = task
        self.broadcast = broadcast
        self.waiters = 0


def _retrieve(task: asyncio.Task[object]) -> None:
    """Marks an error as seen when every caller left before it came (no asyncio warning)."""
    if not task.cancelled():
        task.exception()


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """The result of `call()`, run once for every concurrent caller with `key`."""
        flight = self._board(key, lambda: (asyncio.ensure_future(call()), None))
        try:
            # shield: a caller cancelled here leaves the flight running for the others.
            return cast(T, await asyncio.shield(flight.task))
        finally:
            self._leave(key, flight)

    async def follow(
        self,
        key: Hashable | None,
        produce: Callable[[Broadcast[E]], Coroutine[Any, Any, None]],
    ) -> AsyncIterator[E]:
        """The events `produce` publishes, produced once for every concurrent caller with
        `key` (None: a flight of its own, shared with nobody). `produce` closes the broadcast
        when it is done (also when it fails)."""

        def start() -> tuple[asyncio.Task[None], Broadcast[E]]:
            broadcast: Broadcast[E] = Broadcast()
            return asyncio.ensure_future(produce(broadcast)), broadcast

        own = object() if key is None else key
        flight = self._board(own, start)
        assert flight.broadcast is not None
        try:
            async for event in flight.broadcast.follow():
                yield cast(E, event)
        finally:
            self._leave(own, flight)

    def _board(
        self,
        key: Hashable,
        start: Callable[[], tuple[asyncio.Task[Any], Broadcast[Any] | None]],
    ) -> _Flight:
        flight = self._flights.get(key)
        if flight is None:
            task, broadcast = start()
            flight = self._flights[key] = _Flight(task, broadcast)
            task.add_done_callback(_retrieve)
            landed = flight
            task.add_done_callback(lambda _: self._land(key, landed))
        flight.waiters += 1
        return flight

    def _leave(self, key: Hashable, flight: _Flight) -> None:
        flight.waiters -= 1
        if flight.waiters == 0 and not flight.task.done():
            # Nobody waits any more: stop paying for it, and let the next caller start
            # afresh instead of joining a flight that is being cancelled.
            self._land(key, flight)
            flight.task.cancel()

    def _land(self, key: Hashable, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
