"""`put_many` (cache_server.store.base) on every backend: a batch is stored exactly as `put`
would store its entries one after another: replacements, evictions beyond the cap (never the
entry just written), the later of two entries with one id, and each refusal (another
dimension, one cache too many, another model) for its own entry alone, the rest stored."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import cast

import pytest

from cache_server.entries import CacheEntry
from cache_server.store.base import (
    CacheLimitError,
    CacheStore,
    ModelMismatchError,
    PutOutcome,
    StoreConflictError,
)
from cache_server.store.bulk import put_many
from tests.contract.stores import DIM, NOW, entry, put, vec


async def test_a_batch_is_stored_as_put_one_after_another_would(store: CacheStore) -> None:
    a0, a1 = entry("a0"), entry("a1")
    await put(store, a0, vec(1), max_entries=4, now=NOW)
    await put(store, a1, vec(0, 1), max_entries=4, now=NOW + 1)
    b0, b1, b2 = entry("b0"), entry("b1"), entry("b2")
    a0_again = dataclasses.replace(a0, response="a0, answered again")
    b1_later = dataclasses.replace(b1, response="b1, the later one")
    wrong_size = entry("wrong size")
    other_cache = entry("elsewhere", cache_id="c2")
    items = [
        (b0, vec(0, 0, 1)),
        (b1, vec(0, 0, 0, 1)),
        (a0_again, vec(1, 0.1)),  # replaces a0, and makes it recently used
        (b2, vec(0, 0, 0, 0, 1)),  # the fifth entry: a1, the least recently used, goes
        (wrong_size, vec(1, dim=DIM * 2)),
        (other_cache, vec(1)),  # c1 is the one cache there may be
        (b1_later, vec(0, 0, 0, 1, 0.1)),  # the same id again: the later stays
    ]
    results = await put_many(store, items, 4, NOW + 10, max_caches=1)

    assert results[:4] == [PutOutcome(0), PutOutcome(0), PutOutcome(0), PutOutcome(1)]
    assert isinstance(results[4], StoreConflictError)
    assert "holds 8-dim vectors; got 16" in str(results[4])
    assert isinstance(results[5], CacheLimitError)
    assert "at most 1 caches (max_caches)" in str(results[5])
    assert results[6] == PutOutcome(0)
    assert await store.count("c1", NOW + 10) == 4
    assert await store.get("c1", a1.id, NOW + 10) is None
    assert await store.get("c1", wrong_size.id, NOW + 10) is None
    assert await store.get("c2", other_cache.id, NOW + 10) is None
    assert await store.get("c1", a0.id, NOW + 10) == a0_again
    assert await store.get("c1", b1.id, NOW + 10) == b1_later
    found = await store.search("c1", vec(0, 0, 0, 1, 0.1), 1, 0.99, {}, NOW + 10)
    assert [(f.response, round(s, 4)) for f, s in found] == [("b1, the later one", 1.0)]
    assert (await store.counters("c1")).get("evictions") == 1
    assert await store.cache_ids() == ["c1"]
    # Each refusal is the one put raises for that entry.
    with pytest.raises(StoreConflictError) as conflict:
        await put(store, wrong_size, vec(1, dim=DIM * 2), 4, NOW + 10, max_caches=1)
    assert str(conflict.value) == str(results[4])


async def test_a_batch_of_another_model_is_refused_entry_by_entry(store: CacheStore) -> None:
    held = entry("held")
    await store.put(held, vec(1), 10, NOW, max_caches=10, model="model-a")
    items = [(entry(f"new {i}"), vec(1, i)) for i in range(3)]
    results = await put_many(store, items, 10, NOW, max_caches=10, model="model-b")
    assert all(isinstance(r, ModelMismatchError) for r in results), results
    assert await store.entry_ids("c1") == [held.id]
    first = await put_many(store, items, 10, NOW, max_caches=10, model="model-a")
    assert first == [PutOutcome(0)] * 3 and await store.count("c1", NOW) == 4
    assert await put_many(store, [], 10, NOW, max_caches=10) == []


class SlowFirst:
    """A store whose puts run concurrently, each later one finishing sooner: what the default
    put_many must not let reorder two entries with one id."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}
        self.pending = 0

    async def put(self, e: CacheEntry, *_: object, **__: object) -> PutOutcome:
        self.pending += 1
        await asyncio.sleep(0.01 * (10 - self.pending % 10))
        self.held[e.id] = e.response
        return PutOutcome(0)


async def test_the_default_never_puts_two_entries_of_one_id_at_once() -> None:
    store = SlowFirst()
    first = entry("same")
    later = dataclasses.replace(first, response="the later answer")
    items = [(first, vec(1)), (entry("other"), vec(0, 1)), (later, vec(1))]
    results = await put_many(cast(CacheStore, store), items, 10, NOW, max_caches=10)
    assert results == [PutOutcome(0)] * 3
    assert store.held[first.id] == "the later answer"
