"""RedisStore beyond the shared contract: replicas sharing one Redis, atomicity of every
multi-key step (no orphan keys whatever step is interrupted), the key layout, and Redis's
own failure modes (maxmemory)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.crc import key_slot

from cache_server.store.base import StoreFullError
from cache_server.store.redis_store import RedisStore
from tests.contract.stores import NOW, entry, fresh_prefix, put, redis_server, vec


class Interrupted(Exception):
    """Stands for a cancellation or a lost connection between two Redis round trips."""


async def replica(prefix: str) -> RedisStore:
    store = RedisStore(redis_server().url, prefix=prefix)
    await store.open()
    return store


@pytest.fixture()
async def pair() -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    prefix = fresh_prefix()
    one, two = await replica(prefix), await replica(prefix)
    yield one, two
    await one.close()
    await two.close()


def raw() -> Any:
    return redis_server().client()


def entry_hashes(prefix: str) -> dict[str, str]:
    """Every entry hash under the prefix (key -> entry id), whatever the key layout."""
    client = raw()
    found = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        if client.type(key) == b"hash" and client.hexists(key, "prompt"):
            found[key.decode()] = client.hget(key, "id").decode()
    return found


def indexes(prefix: str) -> list[str]:
    return [n.decode() for n in raw().execute_command("FT._LIST") if n.decode().startswith(prefix)]


async def assert_consistent(store: RedisStore, cache_id: str, now: float = NOW) -> None:
    """What Redis holds is what the store reports: no orphan hash (searchable yet never
    counted nor evicted), no counted entry without its hash, and a SCAN of the cache's key
    space finds exactly its entries and its bookkeeping keys."""
    held = set(entry_hashes(store.prefix).values())
    assert await store.count(cache_id, now) == len(held)
    found = await store.search(cache_id, vec(1), 100, -1.0, {}, now)
    assert {f.id for f, _ in found} == held
    for entry_id in held:
        assert await store.get(cache_id, entry_id, now) is not None
    keys = store.layout.cache(cache_id)
    client = raw()
    scanned = {k.decode() for k in client.scan_iter(match=keys.pattern, count=1000)}
    bookkeeping = {keys.meta, keys.lru, keys.exp, keys.stats}
    assert scanned - bookkeeping == {keys.entry(i) for i in held}
    assert {m.decode() for m in client.zrange(keys.lru, 0, -1)} == held
    assert {m.decode() for m in client.zrange(keys.exp, 0, -1)} <= held
    assert (keys.meta in scanned) == (keys.index in indexes(store.prefix))
    assert keys.meta in scanned or not held


def interrupt(
    monkeypatch: pytest.MonkeyPatch, store: RedisStore, at: int, *, after: bool
) -> list[int]:
    """Makes the `at`-th Redis round trip of `store` fail: before it is sent, or after Redis
    has applied it (the reply is lost)."""
    original = store._call
    calls: list[int] = []

    async def call(operation: Callable[[], Awaitable[Any]]) -> Any:
        calls.append(1)
        if len(calls) == at and not after:
            raise Interrupted
        result = await original(operation)
        if len(calls) == at and after:
            raise Interrupted
        return result

    monkeypatch.setattr(store, "_call", call)
    return calls


def on_reply_naming(
    monkeypatch: pytest.MonkeyPatch,
    store: RedisStore,
    entry_id: str,
    action: Callable[[], Awaitable[None]],
) -> list[int]:
    """Runs `action` (once) right after a Redis reply to `store` that names `entry_id`: the
    gap between a step that lists ids and the step that acts on them."""
    original = store._call
    fired: list[int] = []

    async def call(operation: Callable[[], Awaitable[Any]]) -> Any:
        result = await original(operation)
        if not fired and entry_id in repr(result):
            fired.append(1)
            await action()
        return result

    monkeypatch.setattr(store, "_call", call)
    return fired


async def test_replicas_stay_coherent_across_a_flush_and_a_new_dimension(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    one, two = pair
    third = await replica(one.prefix)
    try:
        old = entry("old model")
        await put(one, old, vec(1))
        for store in (one, two, third):  # every replica has seen the cache and its index
            assert [f.id for f, _ in await store.search("c1", vec(1), 5, 0.5, {}, NOW)] == [old.id]
        assert await one.flush("c1") == 1
        # Another replica writes right after the flush, with the same dimension, then a new
        # model's: each entry is searchable through every replica at once.
        same = entry("same model")
        await put(two, same, vec(0, 1))
        for store in (one, two, third):
            assert [f.id for f, _ in await store.search("c1", vec(0, 1), 5, 0.5, {}, NOW)] == [
                same.id
            ]
        assert await third.flush("c1") == 1
        new = entry("new model")
        await put(two, new, vec(1, dim=4))
        for store in (one, two, third):
            found = await store.search("c1", vec(1, dim=4), 5, 0.5, {}, NOW)
            assert [f.id for f, _ in found] == [new.id]
            assert await store.search("c1", vec(1), 5, 0.5, {}, NOW) == []
            await store.check_dimension("c1", 4)
        await put(one, entry("new model again"), vec(0, 1, dim=4))
        assert await third.count("c1", NOW) == 2
        assert len(indexes(one.prefix)) == 1
    finally:
        await third.close()


async def test_flush_drops_the_index_and_every_key_of_the_cache(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    one, _ = pair
    for i in range(5):
        await put(one, entry(f"p{i}", ttl=1000 if i % 2 else None, team="x"), vec(1, i))
    await put(one, entry("elsewhere", cache_id="c2"), vec(1))
    await one.add_counters("c1", {"hits": 3})
    assert len(indexes(one.prefix)) == 2
    assert await one.flush("c1") == 5
    assert len(indexes(one.prefix)) == 1  # c2's
    assert sorted(entry_hashes(one.prefix).values()) == [entry("elsewhere", cache_id="c2").id]
    assert (await one.counters("c1")).get("hits") == 3  # counters go with reset_counters
    assert await one.flush("c2") == 1
    assert indexes(one.prefix) == []
    await one.reset_counters("c1")
    assert list(raw().scan_iter(match=f"{one.prefix}*")) == []


async def test_a_big_flush_runs_in_bounded_atomic_steps_and_completes(
    pair: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = pair
    monkeypatch.setattr(RedisStore, "flush_batch", 3, raising=False)
    for i in range(10):
        await put(one, entry(f"p{i}"), vec(1, i), max_entries=100)
    assert await one.flush("c1") == 10
    assert entry_hashes(one.prefix) == {} and indexes(one.prefix) == []
    assert list(raw().scan_iter(match=f"{one.prefix}*")) == []


@pytest.mark.parametrize("after", [False, True], ids=["before-sent", "reply-lost"])
async def test_an_interrupted_flush_leaves_a_consistent_cache_and_a_retry_completes(
    monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    monkeypatch.setattr(RedisStore, "flush_batch", 2, raising=False)
    for at in range(1, 8):
        store = await replica(fresh_prefix())
        try:
            for i in range(5):
                await put(store, entry(f"p{i}"), vec(1, i))
            calls = interrupt(monkeypatch, store, at, after=after)
            with contextlib.suppress(Interrupted):
                await store.flush("c1")
            monkeypatch.undo()
            monkeypatch.setattr(RedisStore, "flush_batch", 2, raising=False)
            await assert_consistent(store, "c1")
            await store.flush("c1")
            assert entry_hashes(store.prefix) == {} and indexes(store.prefix) == [], at
            if len(calls) < at:
                break
        finally:
            await store.close()


@pytest.mark.parametrize("after", [False, True], ids=["before-sent", "reply-lost"])
async def test_an_interrupted_put_leaves_no_orphan_entry(
    monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    for at in range(1, 6):
        store = await replica(fresh_prefix())
        try:
            await put(store, entry("a"), vec(1, 0), max_entries=2, now=NOW)
            await put(store, entry("b"), vec(1, 1), max_entries=2, now=NOW + 1)
            calls = interrupt(monkeypatch, store, at, after=after)
            with contextlib.suppress(Interrupted):  # evicts "a"
                await put(store, entry("c"), vec(1, 2), max_entries=2, now=NOW + 2)
            monkeypatch.undo()
            await assert_consistent(store, "c1")
            assert await store.count("c1", NOW) <= 2
            if len(calls) < at:
                break
        finally:
            await store.close()


async def test_an_entry_restored_while_another_put_evicts_it_is_kept(
    pair: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = pair
    victim, other = entry("victim"), entry("other")
    await put(one, victim, vec(1, 0), max_entries=2, now=NOW)
    await put(one, other, vec(1, 1), max_entries=2, now=NOW + 1)

    async def restore() -> None:  # another replica stores the victim again, in the gap
        await put(two, victim, vec(1, 0), max_entries=2, now=NOW + 3)

    fired = on_reply_naming(monkeypatch, one, victim.id, restore)
    await put(one, entry("newest"), vec(1, 2), max_entries=2, now=NOW + 2)
    monkeypatch.undo()
    if fired:  # a layout with a gap between choosing and deleting must not lose it
        assert await one.get("c1", victim.id, NOW + 3) is not None
    await assert_consistent(one, "c1")
    assert await one.count("c1", NOW) == 2


async def test_the_purge_spares_an_entry_restored_after_it_was_listed(
    pair: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = pair
    e = entry("asked again right after it expired", ttl=10)
    await put(one, e, vec(1))
    later = NOW + 11
    fresh = entry("asked again right after it expired", ttl=100, created=later)

    async def restore() -> None:  # a Query miss on the expired prompt stores it again
        await put(two, fresh, vec(1), now=later)

    fired = on_reply_naming(monkeypatch, one, e.id, restore)
    outcome = await one.purge_expired(later)
    monkeypatch.undo()
    assert fired, "the purge lists the expired ids before removing them"
    assert dict(outcome.expired) == {}
    assert await one.get("c1", e.id, later) == fresh
    assert (await one.counters("c1")).get("expirations", 0) == 0
    await assert_consistent(one, "c1", later)
    # Once the new TTL has passed, it is purged (and counted) as usual.
    assert dict((await one.purge_expired(later + 100)).expired) == {"c1": 1}


async def test_the_keys_of_one_cache_share_one_cluster_hash_slot(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    one, _ = pair
    for i in range(5):
        await put(one, entry(f"p{i}", ttl=100 if i % 2 else None), vec(1, i))
    await one.add_counters("c1", {"hits": 1})
    keys = [k.decode() for k in raw().scan_iter(match=f"{one.prefix}*")]
    slots = [key_slot(k.encode()) for k in keys]
    # All but the one registry of caches (a key of its own) share the cache's slot.
    top = max(set(slots), key=slots.count)
    assert len(keys) >= 8 and slots.count(top) == len(keys) - 1, keys


async def test_data_under_an_older_key_layout_is_reported_at_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = fresh_prefix()
    client = raw()
    client.sadd(f"{prefix}:_caches", "c1")  # what the first layout left behind
    client.hset(f"{prefix}:c1:e:0123", mapping={"id": "0123", "prompt": "old"})
    try:
        with caplog.at_level(logging.WARNING):
            store = await replica(prefix)
        assert "older key layout" in caplog.text and prefix in caplog.text
        assert await store.count("c1", NOW) == 0  # invisible to this version
        await store.close()
    finally:
        client.delete(f"{prefix}:_caches", f"{prefix}:c1:e:0123")


async def test_a_full_redis_refuses_writes_with_store_full(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    one, _ = pair
    kept = entry("kept")
    await put(one, kept, vec(1))
    client = raw()
    client.config_set("maxmemory", "1")
    try:
        with pytest.raises(StoreFullError, match="maxmemory"):
            await put(one, entry("one more"), vec(1, 1))
        with pytest.raises(StoreFullError, match="maxmemory"):
            await put(one, entry("a new cache", cache_id="c2"), vec(1, 1))
        assert await one.get("c1", kept.id, NOW) == kept  # reads still answer
        assert await one.count("c1", NOW) == 1
        assert await one.flush("c1") == 1  # flushing (freeing memory) is never refused
        assert entry_hashes(one.prefix) == {} and indexes(one.prefix) == []
    finally:
        client.config_set("maxmemory", "0")
    await put(one, entry("one more"), vec(1, 1))
