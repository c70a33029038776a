"""SingleFlight: one call per key, shared by everyone who asks meanwhile, and never tied to
the fate of any one caller."""

from __future__ import annotations

import asyncio

import pytest

from cache_server.single_flight import SingleFlight


class SlowCall:
    """An upstream call that takes `delay_s`, counting starts, finishes and cancellations."""

    def __init__(self, delay_s: float = 0.2, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.started = self.finished = self.cancelled = 0

    async def __call__(self) -> str:
        self.started += 1
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.fail:
            raise RuntimeError("upstream failed")
        return f"answer {self.started}"


async def test_concurrent_callers_share_one_call() -> None:
    flights, call = SingleFlight(), SlowCall(0.05)
    results = await asyncio.gather(*(flights.run("k", call) for _ in range(10)))
    assert results == ["answer 1"] * 10 and call.started == 1
    assert flights.in_flight == 0


async def test_a_leader_that_gives_up_does_not_take_the_followers_with_it() -> None:
    flights, call = SingleFlight(), SlowCall(0.3)
    leader = asyncio.create_task(flights.run("k", call))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(flights.run("k", call))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(leader, 0.1)  # the leader's deadline passes mid-flight
    assert await asyncio.wait_for(follower, 2) == "answer 1"
    assert call.started == 1 and call.cancelled == 0


async def test_the_call_is_cancelled_when_every_caller_has_left() -> None:
    flights, call = SingleFlight(), SlowCall(0.5)
    callers = [asyncio.create_task(flights.run("k", call)) for _ in range(3)]
    await asyncio.sleep(0.05)
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert call.cancelled == 1 and flights.in_flight == 0
    # Who comes next starts afresh instead of inheriting the cancellation.
    assert await flights.run("k", call) == "answer 2"


async def test_a_caller_arriving_while_the_last_one_leaves_gets_a_fresh_call() -> None:
    flights, call = SingleFlight(), SlowCall(0.2)
    first = asyncio.create_task(flights.run("k", call))
    await asyncio.sleep(0.01)
    first.cancel()
    second = asyncio.create_task(flights.run("k", call))  # same tick as the cancellation
    await asyncio.gather(first, return_exceptions=True)
    assert await asyncio.wait_for(second, 2) == "answer 2"


async def test_an_error_reaches_every_caller_and_the_next_call_retries() -> None:
    flights, call = SingleFlight(), SlowCall(0.05, fail=True)
    results = await asyncio.gather(
        *(flights.run("k", call) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results) and call.started == 1
    call.fail = False
    assert await flights.run("k", call) == "answer 2"


async def test_different_keys_fly_separately() -> None:
    flights, call = SingleFlight(), SlowCall(0.05)
    await asyncio.gather(flights.run("a", call), flights.run("b", call))
    assert call.started == 2 and call.finished == 2
