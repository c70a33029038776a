"""Writing many entries at once (cache_server.transfer's import): `put_many`, what the store's
`put` does with each entry, in fewer round trips where the store has its own way (RedisStore,
pipelined), else with puts overlapped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cache_server.entries import CacheEntry
from cache_server.store.base import (
    CacheLimitError,
    CacheStore,
    FloatArray,
    PutOutcome,
    StoreConflictError,
)

PutResult = PutOutcome | CacheLimitError | StoreConflictError
"""What `put` did with one entry: its outcome, or the refusal it raised (that entry not stored;
ModelMismatchError is a StoreConflictError)."""


@runtime_checkable
class BulkPut(Protocol):
    """A store with its own way of writing many entries at once (RedisStore: pipelined)."""

    async def put_many(
        self,
        items: Sequence[tuple[CacheEntry, FloatArray]],
        max_entries: int,
        now: float,
        *,
        max_caches: int,
        model: str = "",
    ) -> list[PutResult]:
        """See `put_many`: the same results, in fewer round trips."""
        ...


PUTS_AT_ONCE = 32  # puts in flight in put_many's default: the store's thread hops overlapped


async def put_many(
    store: CacheStore,
    items: Sequence[tuple[CacheEntry, FloatArray]],
    max_entries: int,
    now: float,
    *,
    max_caches: int,
    model: str = "",
) -> list[PutResult]:
    """What `store.put` does with each (entry, vector), one after another in order (of two
    entries with one id the later stays), each with its own checks, its own evictions and its
    own refusal: one result per item, the PutOutcome or the CacheLimitError or
    StoreConflictError `put` raised for it. A failure of the store itself (unavailable, full,
    cancelled) is raised instead, some items stored and some not: putting them all again is
    safe (each entry replaces itself).

    The store's own `put_many` where it has one (BulkPut); else `put` per item, PUTS_AT_ONCE
    in flight, submitted in order (the embedded store runs them in that order on its one
    thread), never two with one id at once."""
    if isinstance(store, BulkPut):
        return await store.put_many(items, max_entries, now, max_caches=max_caches, model=model)

    async def put(entry: CacheEntry, vector: FloatArray) -> PutResult:
        try:
            return await store.put(
                entry, vector, max_entries, now, max_caches=max_caches, model=model
            )
        except (CacheLimitError, StoreConflictError) as refused:
            return refused

    results: list[PutResult] = []
    start = 0
    while start < len(items):
        stop, ids = start, set[tuple[str, str]]()
        while stop < len(items) and stop - start < PUTS_AT_ONCE:
            entry = items[stop][0]
            if (entry.cache_id, entry.id) in ids:
                break
            ids.add((entry.cache_id, entry.id))
            stop += 1
        results += await asyncio.gather(*(put(e, v) for e, v in items[start:stop]))
        start = stop
    return results
