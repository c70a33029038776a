"""Scoped searches on a FLAT index (cache_server.store.redis_hybrid): RediSearch is told to
scan the whole index once (BATCHES) for a scope holding a large share of the cache, and to
walk the scope (ADHOC_BF) for a small one, so that a scoped search never costs more than an
unscoped one; either way the answer is the exact nearest entries of the scope. The share is
counted once per scope and used for a while; an HNSW index keeps RediSearch's own choice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from cache_server.entries import CacheEntry, entry_id
from cache_server.store import redis_hybrid
from cache_server.store.bulk import put_many
from cache_server.store.redis_store import RedisStore
from tests.contract.stores import NOW, fresh_prefix, redis_server

ENTRIES = 400
DIM = 16


def attributes(i: int) -> dict[str, str]:
    scope = {"tenant": str(i % 4)}  # a quarter of the cache each
    if i % 100 == 0:
        scope["rare"] = "yes"  # 1% of it
    return scope


async def filled(algorithm: Any) -> tuple[RedisStore, np.ndarray]:
    store = RedisStore(redis_server().url, prefix=fresh_prefix(), algorithm=algorithm)
    await store.open()
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((ENTRIES, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [
        (CacheEntry("c", entry_id("c", f"q{i}", attributes(i)), f"q{i}", str(i), attributes(i)), v)
        for i, v in enumerate(vectors)
    ]
    await put_many(store, items, 10_000, NOW, max_caches=10)
    return store, vectors


def recorded(monkeypatch: pytest.MonkeyPatch, store: RedisStore) -> tuple[list[str], list[int]]:
    """The KNN queries `store` sends, and one item per round trip."""
    queries: list[str] = []
    calls: list[int] = []
    execute, call = store._redis.execute_command, store._call

    async def execute_command(*args: Any, **options: Any) -> Any:
        if args[0] == "FT.SEARCH" and "KNN" in str(args[2]):
            queries.append(str(args[2]))
        return await execute(*args, **options)

    async def counted(operation: Callable[[], Awaitable[Any]]) -> Any:
        calls.append(1)
        return await call(operation)

    monkeypatch.setattr(store._redis, "execute_command", execute_command)
    monkeypatch.setattr(store, "_call", counted)
    return queries, calls


def exact(vectors: np.ndarray, query: np.ndarray, scope: dict[str, str], k: int) -> list[str]:
    held = [i for i in range(ENTRIES) if scope.items() <= attributes(i).items()]
    best = sorted(held, key=lambda i: -float(vectors[i] @ query))[:k]
    return [str(i) for i in best]


async def test_a_flat_scope_is_scanned_once_when_large_and_walked_when_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, vectors = await filled("FLAT")
    try:
        queries, calls = recorded(monkeypatch, store)
        rng = np.random.default_rng(6)
        for scope, policy in (
            ({"tenant": "1"}, "HYBRID_POLICY BATCHES"),
            ({"rare": "yes"}, "HYBRID_POLICY ADHOC_BF"),
            ({}, None),
        ):
            for _ in range(3):
                query = rng.standard_normal(DIM).astype(np.float32)
                query /= np.linalg.norm(query)
                found = await store.search("c", query, 3, -1.0, scope, NOW)
                assert [e.response for e, _ in found] == exact(vectors, query, scope, 3)
                assert (policy in queries[-1]) if policy else "HYBRID_POLICY" not in queries[-1]
        # Each scope's share counted once (one round trip), then each search is one.
        assert len(calls) == 2 + 9
    finally:
        await store.close()


async def test_the_policy_follows_the_scope_as_it_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    store, vectors = await filled("FLAT")
    try:
        queries, _ = recorded(monkeypatch, store)
        grown = {"rare": "yes"}
        await store.search("c", vectors[0], 1, -1.0, grown, NOW)
        assert "ADHOC_BF" in queries[-1]
        more = [
            (CacheEntry("c", entry_id("c", f"more {i}", grown), f"more {i}", "x", grown), v)
            for i, v in enumerate(vectors[:200])
        ]
        await put_many(store, more, 10_000, NOW, max_caches=10)
        await store.search("c", vectors[0], 1, -1.0, grown, NOW)
        assert "ADHOC_BF" in queries[-1]  # the share counted before is used for a while
        monkeypatch.setattr(redis_hybrid, "SHARE_HINT_S", 0.0)
        found = await store.search("c", vectors[0], 1, -1.0, grown, NOW)
        assert "BATCHES" in queries[-1]  # 204 of 600
        assert found[0][1] == pytest.approx(1.0)
    finally:
        await store.close()


async def test_an_hnsw_index_keeps_redisearchs_own_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    store, vectors = await filled("HNSW")
    try:
        queries, calls = recorded(monkeypatch, store)
        await store.search("c", vectors[1], 1, -1.0, {"tenant": "1"}, NOW)
        assert "HYBRID_POLICY" not in queries[-1] and len(calls) == 1
    finally:
        await store.close()
