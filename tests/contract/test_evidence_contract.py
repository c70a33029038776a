"""The verified hit policy's part of the store contract, for every backend: observations kept
in order, bounded (the newest kept) and durable; they go with the answer they judged (an
answer stored again, deleted, evicted, expired or flushed starts over) while the cache's pool
keeps them until a flush; the hit policy outlives a flush; concurrent observations lose none.
Then what each backend adds: the embedded store opens files written before the evidence
column existed, and Redis keeps observations out of the index, the search replies and the
entry's expiry."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache_server.learned_thresholds import evidence
from cache_server.store import embedded_feedback, redis_evidence
from cache_server.store.base import CacheStore
from cache_server.store.embedded import EmbeddedStore
from cache_server.store.redis_store import RedisStore
from tests.contract.stores import NOW, StoreFactory, entry, put, redis_factory, redis_server, vec


def rec(i: int, correct: bool = True) -> bytes:
    """A distinct record per i (similarity i / SCALE)."""
    return evidence.record(i / evidence.SCALE, correct)


def joined(*indices: int) -> bytes:
    return b"".join(rec(i) for i in indices)


def records(blob: bytes) -> list[bytes]:
    assert len(blob) % evidence.RECORD_BYTES == 0
    return [blob[i : i + evidence.RECORD_BYTES] for i in range(0, len(blob), 2)]


async def test_observations_accumulate_in_order_and_survive_a_reopen(
    factory: StoreFactory,
) -> None:
    first = await factory()
    e = entry("what is the capital of France?")
    await put(first, e, vec(1), 10, NOW)
    assert await first.evidence("c1", e.id) == b""
    assert await first.pooled_evidence("c1") == b""
    for i in (7, 3, 9):
        assert await first.observe("c1", e.id, e.created_at, rec(i))
    assert await first.observe("c1", e.id, e.created_at, evidence.record(0.5, False))
    expected = joined(7, 3, 9) + evidence.record(0.5, False)
    assert await first.evidence("c1", e.id) == expected
    assert await first.pooled_evidence("c1") == expected
    await first.close()
    again = await factory()
    try:
        assert await again.evidence("c1", e.id) == expected
        assert await again.pooled_evidence("c1") == expected
        similarities, labels = evidence.decode(await again.evidence("c1", e.id))
        assert labels.tolist() == [1.0, 1.0, 1.0, 0.0]
        assert similarities[-1] == pytest.approx(0.5)
        # And they keep accumulating after the reopen.
        assert await again.observe("c1", e.id, e.created_at, rec(11))
        assert await again.evidence("c1", e.id) == expected + rec(11)
    finally:
        await again.close()


async def test_the_entry_keeps_its_newest_observations(store: CacheStore) -> None:
    e = entry("q")
    await put(store, e, vec(1), 10, NOW)
    total = evidence.MAX_PER_ENTRY + 6
    for i in range(total):
        await store.observe("c1", e.id, e.created_at, rec(i))
    assert await store.evidence("c1", e.id) == joined(*range(6, total))
    assert await store.pooled_evidence("c1") == joined(*range(total))


async def test_the_pool_keeps_the_newest_observations_of_the_cache(
    store: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evidence, "MAX_PER_ENTRY", 3)
    monkeypatch.setattr(evidence, "MAX_PER_CACHE", 5)
    a, b = entry("a"), entry("b")
    await put(store, a, vec(1), 10, NOW)
    await put(store, b, vec(0, 1), 10, NOW)
    for i in range(8):
        one = a if i % 2 == 0 else b
        assert await store.observe("c1", one.id, one.created_at, rec(i))
    assert await store.pooled_evidence("c1") == joined(3, 4, 5, 6, 7)
    assert await store.evidence("c1", a.id) == joined(2, 4, 6)
    assert await store.evidence("c1", b.id) == joined(3, 5, 7)


async def test_an_answer_stored_again_starts_without_evidence(store: CacheStore) -> None:
    e = entry("how do I reset my password?")
    await put(store, e, vec(1), 10, NOW)
    assert await store.observe("c1", e.id, e.created_at, rec(1))
    newer = entry("how do I reset my password?", created=NOW + 5)
    assert newer.id == e.id
    await put(store, newer, vec(1), 10, NOW + 5)
    assert await store.evidence("c1", e.id) == b""
    # A verdict on the old answer, arriving late: not the new answer's, but still the cache's.
    assert not await store.observe("c1", e.id, e.created_at, rec(2))
    assert await store.evidence("c1", e.id) == b""
    assert await store.observe("c1", e.id, newer.created_at, rec(3))
    assert await store.evidence("c1", e.id) == rec(3)
    assert await store.pooled_evidence("c1") == joined(1, 2, 3)
    # Stored again even with the same created_at: a new answer, no evidence.
    await put(store, newer, vec(1), 10, NOW + 6)
    assert await store.evidence("c1", e.id) == b""


async def test_evidence_goes_with_a_deleted_evicted_or_expired_entry(store: CacheStore) -> None:
    deleted, evicted, kept = entry("deleted"), entry("evicted"), entry("kept")
    expiring = entry("expiring", ttl=10)
    for i, e in enumerate((deleted, evicted, expiring)):
        await put(store, e, vec(1, i), 10, NOW + i)
        assert await store.observe("c1", e.id, e.created_at, rec(i))
    assert await store.delete("c1", deleted.id)
    assert await store.evidence("c1", deleted.id) == b""
    await put(store, deleted, vec(1), 10, NOW + 3)  # back, without its old evidence
    assert await store.evidence("c1", deleted.id) == b""
    assert (await store.purge_expired(NOW + 100)).expired == {"c1": 1}
    assert await store.evidence("c1", expiring.id) == b""
    # `evicted` is the least recently used: a cap of 2 evicts it for `kept`.
    outcome = await put(store, kept, vec(0, 1), 2, NOW + 4)
    assert outcome.evicted == 1
    assert await store.get("c1", evicted.id, NOW + 4) is None
    assert await store.evidence("c1", evicted.id) == b""
    assert not await store.observe("c1", evicted.id, evicted.created_at, rec(9))
    # The pool keeps every observation of the cache, those of gone entries too.
    assert await store.pooled_evidence("c1") == joined(0, 1, 2, 9)
    assert await store.sample_evidence("c1", 10) == []


async def test_a_flush_drops_the_evidence_and_the_pool_and_keeps_the_policy(
    store: CacheStore,
) -> None:
    e, other = entry("q"), entry("q", cache_id="c2")
    policy = json.dumps({"name": "verified", "max_error_rate": 0.02})
    for one in (e, other):
        await put(store, one, vec(1), 10, NOW)
        assert await store.observe(one.cache_id, one.id, one.created_at, rec(1))
        await store.set_cache_policy(one.cache_id, policy)
    assert await store.flush("c1") == 1
    assert await store.evidence("c1", e.id) == b""
    assert await store.pooled_evidence("c1") == b""
    assert await store.sample_evidence("c1", 10) == []
    assert await store.cache_policy("c1") == policy
    # No longer held: an observation on it (a verdict arriving late) stores nothing.
    assert not await store.observe("c1", e.id, e.created_at, rec(2))
    assert await store.pooled_evidence("c1") == b""
    # Held again: a fresh start, under the policy still set.
    await put(store, e, vec(1), 10, NOW + 1)
    assert await store.evidence("c1", e.id) == b""
    assert await store.observe("c1", e.id, e.created_at, rec(3))
    assert await store.pooled_evidence("c1") == rec(3)
    assert await store.cache_policy("c1") == policy
    # The other cache is untouched.
    assert await store.evidence("c2", other.id) == rec(1)
    assert await store.pooled_evidence("c2") == rec(1)
    assert await store.cache_policy("c2") == policy


async def test_forgetting_what_was_learned_keeps_the_entries_and_the_policy(
    store: CacheStore,
) -> None:
    """A re-embedding with another model: the observed similarities were the old model's."""
    e, f, other = entry("q"), entry("r"), entry("q", cache_id="c2")
    policy = json.dumps({"name": "verified", "max_error_rate": 0.02})
    for one in (e, f, other):
        await put(store, one, vec(1), 10, NOW)
        assert await store.observe(one.cache_id, one.id, one.created_at, rec(1))
    await store.set_cache_policy("c1", policy)
    await store.forget_learning("c1")
    assert await store.evidence("c1", e.id) == b"" == await store.evidence("c1", f.id)
    assert await store.pooled_evidence("c1") == b""
    assert await store.sample_evidence("c1", 10) == []
    assert await store.cache_policy("c1") == policy
    assert await store.count("c1", NOW) == 2
    assert await store.observe("c1", e.id, e.created_at, rec(2))  # learning again
    assert await store.pooled_evidence("c1") == rec(2)
    assert await store.evidence("c2", other.id) == rec(1)  # the other cache is untouched
    assert await store.pooled_evidence("c2") == rec(1)


async def test_the_policy_round_trips_and_none_removes_it(factory: StoreFactory) -> None:
    first = await factory()
    assert await first.cache_policy("c1") is None
    policy = json.dumps({"name": "verified", "max_error_rate": 0.05, "note": "ünï ☃"})
    await first.set_cache_policy("c1", policy)  # configuration: before any entry too
    assert await first.cache_policy("c1") == policy
    assert await first.cache_policy("c2") is None
    assert await first.policy_cache_ids() == ["c1"]
    await first.close()
    again = await factory()
    try:
        assert await again.cache_policy("c1") == policy
        await put(again, entry("q"), vec(1), 10, NOW)
        assert await again.observe("c1", entry("q").id, NOW, rec(1))
        await again.set_cache_policy("c1", "{}")
        assert await again.cache_policy("c1") == "{}"
        await again.set_cache_policy("c1", None)
        assert await again.cache_policy("c1") is None
        assert await again.policy_cache_ids() == []
        assert await again.pooled_evidence("c1") == rec(1)  # the pool is not the policy's
        await again.set_cache_policy("c3", None)  # removing what was never set
        assert await again.cache_policy("c3") is None
    finally:
        await again.close()


async def replicas(factory: StoreFactory) -> list[CacheStore]:
    """The stores that observe at once: on Redis, four replicas sharing it (each process's
    client opens at most 100 connections: beyond that, a call fails at once with "Too many
    connections", so one replica is kept under it); the embedded store has one process."""
    first = await factory()
    if first.backend != "redis":
        return [first]
    return [first, *[await factory() for _ in range(3)]]


async def test_concurrent_observations_lose_none(
    factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evidence, "MAX_PER_ENTRY", 256)  # all 200 fit: each one is checked
    stores = await replicas(factory)
    first = stores[0]
    try:
        e, other = entry("q"), entry("other")
        await put(first, e, vec(1), 10, NOW)
        await put(first, other, vec(0, 1), 10, NOW)
        took = await asyncio.gather(
            *(
                stores[i % len(stores)].observe("c1", e.id, e.created_at, rec(i))
                for i in range(200)
            ),
            *(
                stores[i % len(stores)].observe("c1", other.id, other.created_at, rec(1000 + i))
                for i in range(30)
            ),
        )
        assert all(took)
        mine = records(await first.evidence("c1", e.id))
        assert sorted(mine) == sorted(rec(i) for i in range(200))
        pooled = records(await first.pooled_evidence("c1"))
        everything = [rec(i) for i in range(200)] + [rec(1000 + i) for i in range(30)]
        assert sorted(pooled) == sorted(everything)
        # Each observation is one step: the pool holds the entry's in the entry's order.
        assert [r for r in pooled if r in set(mine)] == mine
    finally:
        for one in stores:
            await one.close()


async def test_concurrent_observations_stay_within_the_bounds(factory: StoreFactory) -> None:
    stores = await replicas(factory)
    try:
        e = entry("q")
        await put(stores[0], e, vec(1), 10, NOW)
        await asyncio.gather(
            *(stores[i % len(stores)].observe("c1", e.id, e.created_at, rec(i)) for i in range(200))
        )
        mine = records(await stores[0].evidence("c1", e.id))
        assert len(mine) == evidence.MAX_PER_ENTRY
        assert set(mine) <= {rec(i) for i in range(200)}
        assert len(records(await stores[0].pooled_evidence("c1"))) == 200
    finally:
        for one in stores:
            await one.close()


async def test_a_sample_holds_only_entries_with_evidence_and_at_most_limit(
    store: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_evidence.RedisEvidence, "sample_page", 2)  # read in pages
    entries = [entry(f"q{i}") for i in range(7)]
    for i, e in enumerate(entries):
        await put(store, e, vec(1, i), 10, NOW + i)
    observed = {entries[i].id: joined(i, 100 + i) for i in (0, 3, 6)}
    for i in (0, 3, 6):
        e = entries[i]
        assert await store.observe("c1", e.id, e.created_at, rec(i))
        assert await store.observe("c1", e.id, e.created_at, rec(100 + i))
    assert sorted(await store.sample_evidence("c1", 100)) == sorted(observed.values())
    two = await store.sample_evidence("c1", 2)
    assert len(two) == 2 and set(two) <= set(observed.values())
    assert await store.sample_evidence("c1", 0) == []
    assert await store.sample_evidence("c2", 100) == []


async def test_an_unknown_cache_has_nothing_and_keeps_nothing(store: CacheStore) -> None:
    assert await store.evidence("nope", "x") == b""
    assert await store.pooled_evidence("nope") == b""
    assert await store.sample_evidence("nope", 10) == []
    assert await store.cache_policy("nope") is None
    assert not await store.observe("nope", "x", NOW, rec(1))
    assert await store.pooled_evidence("nope") == b""
    assert await store.admits("nope", 0) is False  # observing did not make it a cache
    # A known cache, an unknown entry: the pool takes it, no entry does.
    e = entry("q")
    await put(store, e, vec(1), 10, NOW)
    assert not await store.observe("c1", "no-such-entry", NOW, rec(2))
    assert await store.evidence("c1", "no-such-entry") == b""
    assert await store.pooled_evidence("c1") == rec(2)
    assert await store.evidence("c1", e.id) == b""


async def test_an_observation_is_one_record(store: CacheStore) -> None:
    e = entry("q")
    await put(store, e, vec(1), 10, NOW)
    for bad in (b"", b"\x01", rec(1) + rec(2)):
        with pytest.raises(ValueError):
            await store.observe("c1", e.id, e.created_at, bad)
    assert await store.pooled_evidence("c1") == b""


# -- the embedded store: files written before the evidence column ------------------------

_OLD_SCHEMA = """
CREATE TABLE entries (
    cache_id    TEXT NOT NULL,
    id          TEXT NOT NULL,
    prompt      TEXT NOT NULL,
    prompt_key  TEXT NOT NULL,
    response    TEXT NOT NULL,
    attributes  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    last_access REAL NOT NULL,
    vector      BLOB NOT NULL,
    PRIMARY KEY (cache_id, id)
);
CREATE INDEX entries_lru ON entries (cache_id, last_access);
CREATE INDEX entries_exact ON entries (cache_id, prompt_key);
CREATE INDEX entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
"""


async def test_the_embedded_store_opens_a_file_written_before_evidence(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "semcache.sqlite3"
    e = entry("what is the capital of France?")
    old = sqlite3.connect(path)
    old.executescript(_OLD_SCHEMA)
    with old:
        old.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.cache_id,
                e.id,
                e.prompt,
                "k",
                e.response,
                "{}",
                e.created_at,
                None,
                NOW,
                np.asarray(vec(1), dtype="<f4").tobytes(),
            ),
        )
    old.close()
    # The read-only reader (make feedback-export) reads it as it is, writing nothing.
    assert embedded_feedback.read(path, None) == []
    store = EmbeddedStore(data)
    await store.open()
    try:
        assert await store.get("c1", e.id, NOW) == e
        assert [f.id for f, _ in await store.search("c1", vec(1), 1, 0.9, {}, NOW)] == [e.id]
        assert await store.evidence("c1", e.id) == b""
        assert await store.observe("c1", e.id, e.created_at, rec(1))
        assert await store.evidence("c1", e.id) == rec(1)
        assert await store.sample_evidence("c1", 5) == [rec(1)]
        await store.set_cache_policy("c1", "{}")
    finally:
        await store.close()
    again = EmbeddedStore(data)  # a migrated file opens again as it is
    await again.open()
    try:
        assert await again.evidence("c1", e.id) == rec(1)
        assert await again.pooled_evidence("c1") == rec(1)
        assert await again.cache_policy("c1") == "{}"
    finally:
        await again.close()
    assert embedded_feedback.read(path, None) == []


# -- Redis: the evidence field beside the index ------------------------------------------


@pytest.fixture()
async def redis_store(tmp_path: Path) -> Any:
    store = await (await redis_factory(tmp_path))()
    assert isinstance(store, RedisStore)
    yield store
    await store.close()


async def test_redis_observations_leave_the_index_the_replies_and_the_expiry_alone(
    redis_store: RedisStore,
) -> None:
    store = redis_store
    e = entry("q", ttl=3600)
    await put(store, e, vec(1), 10, NOW)
    keys = store.layout.cache("c1")
    client = redis_server().client()
    ttl_before = client.pttl(keys.entry(e.id))
    assert ttl_before > 0
    assert await store.observe("c1", e.id, e.created_at, rec(1))
    ttl_after = client.pttl(keys.entry(e.id))
    assert 0 < ttl_after <= ttl_before and ttl_before - ttl_after < 60_000
    assert client.hget(keys.entry(e.id), "ev") == rec(1)
    info = client.execute_command("FT.INFO", keys.index)
    fields = {a[b"identifier"] for a in info[b"attributes"]}
    assert b"vector" in fields and b"ev" not in fields
    # Search replies carry the entry, not its evidence.
    found = await store.search("c1", vec(1), 1, 0.9, {}, NOW)
    assert [f for f, _ in found] == [e]
    exact = await store.find_exact("c1", "q", {}, NOW)
    assert exact == e
    assert await store.get("c1", e.id, NOW) == e
    # The pool and the policy live in the cache's hash slot, under its keys.
    await store.set_cache_policy("c1", "{}")
    assert client.get(keys.pool) == rec(1)
    assert client.get(keys.policy) == b"{}"
    assert keys.pool.startswith(keys.root) and keys.policy.startswith(keys.root)


async def test_an_entry_inherits_evidence_only_as_the_answer_it_was_given_for(
    factory: StoreFactory,
) -> None:
    store = await factory()
    try:
        e = entry("how do I learn Python?")
        await put(store, e, vec(1), 10, NOW)
        learned = joined(*range(1, 80))  # beyond the per-entry bound: the newest kept
        assert not await store.inherit_evidence("c1", e.id, e.created_at + 1, learned)
        assert await store.evidence("c1", e.id) == b""
        assert await store.inherit_evidence("c1", e.id, e.created_at, learned)
        kept = await store.evidence("c1", e.id)
        assert kept == learned[-evidence.MAX_PER_ENTRY * evidence.RECORD_BYTES :]
        assert await store.pooled_evidence("c1") == b""  # the pool counts each once already
        assert not await store.inherit_evidence("c1", "0" * 32, NOW, learned)
    finally:
        await store.close()
