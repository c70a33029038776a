"""RedisStore.put_many beyond the shared contract: `put_batch` entries per round trip (one
pipeline each), a Redis that lost its scripts (restart, SCRIPT FLUSH) loads the PUT script
again and stores every entry once, and an interrupted batch leaves whole entries only, which
putting the batch again completes."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cache_server.store.base import PutOutcome
from tests.contract.stores import NOW, entry, fresh_prefix, vec
from tests.contract.test_redis_store import Interrupted, assert_consistent, interrupt, raw, replica


def batch(n: int) -> list[tuple[Any, Any]]:
    return [(entry(f"prompt {i}"), vec(1, i / n)) for i in range(n)]


def count_round_trips(monkeypatch: pytest.MonkeyPatch, store: Any) -> list[int]:
    original = store._call
    calls: list[int] = []

    async def call(operation: Callable[[], Awaitable[Any]]) -> Any:
        calls.append(1)
        return await original(operation)

    monkeypatch.setattr(store, "_call", call)
    return calls


async def test_a_batch_goes_in_put_batch_entries_per_round_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = await replica(fresh_prefix())
    monkeypatch.setattr(store, "put_batch", 8)
    try:
        items = batch(19)
        calls = count_round_trips(monkeypatch, store)
        results = await store.put_many(items, 10_000, NOW, max_caches=10)
        assert results == [PutOutcome(0)] * len(items)
        assert len(calls) == 3
        monkeypatch.undo()
        await assert_consistent(store, "c1")
        assert await store.count("c1", NOW) == len(items)
    finally:
        await store.close()


async def test_a_redis_that_lost_its_scripts_gets_the_put_script_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = await replica(fresh_prefix())
    try:
        items = batch(5)
        await store.put_many(items[:1], 100, NOW, max_caches=10)
        raw().script_flush()  # as after a restart
        calls = count_round_trips(monkeypatch, store)
        results = await store.put_many(items, 100, NOW, max_caches=10)
        assert results == [PutOutcome(0)] * 5 and len(calls) == 1
        monkeypatch.undo()
        await assert_consistent(store, "c1")
        assert await store.count("c1", NOW) == 5
    finally:
        await store.close()


@pytest.mark.parametrize("after", [False, True], ids=["before-sent", "reply-lost"])
async def test_an_interrupted_batch_leaves_whole_entries_and_putting_it_again_completes(
    monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    store = await replica(fresh_prefix())
    monkeypatch.setattr(store, "put_batch", 4)
    try:
        items = batch(10)
        interrupt(monkeypatch, store, 2, after=after)  # the second round trip of three
        with contextlib.suppress(Interrupted):
            await store.put_many(items, 100, NOW, max_caches=10)
        monkeypatch.undo()
        await assert_consistent(store, "c1")
        assert await store.count("c1", NOW) == (8 if after else 4)
        again = await store.put_many(items, 100, NOW, max_caches=10)
        assert again == [PutOutcome(0)] * 10
        await assert_consistent(store, "c1")
        assert await store.count("c1", NOW) == 10
    finally:
        await store.close()
