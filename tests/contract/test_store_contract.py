"""One contract for every CacheStore backend. A new backend joins by adding itself to
`BACKENDS`; each test gets a fresh, empty store."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cache_server.entries import CacheEntry, entry_id
from cache_server.store.base import CacheStore, StoreConflictError
from cache_server.store.embedded import EmbeddedStore
from cache_server.store.redis_store import RedisStore
from tests.processes import RedisProcess

NOW = 1_700_000_000.0
DIM = 8
StoreFactory = Callable[[], Awaitable[CacheStore]]


def vec(*values: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def entry(
    prompt: str,
    cache_id: str = "c1",
    ttl: float | None = None,
    created: float = NOW,
    **attributes: str,
) -> CacheEntry:
    return CacheEntry(
        cache_id=cache_id,
        id=entry_id(cache_id, prompt, attributes),
        prompt=prompt,
        response=f"answer to {prompt}",
        attributes=attributes,
        created_at=created,
        expires_at=created + ttl if ttl else None,
    )


async def embedded_factory(tmp_path: Path) -> StoreFactory:
    async def make() -> CacheStore:
        store = EmbeddedStore(tmp_path / "data")
        await store.open()
        return store

    return make


_namespaces = itertools.count()


async def redis_factory(tmp_path: Path) -> StoreFactory:
    # One Redis for the whole session; each test gets its own key prefix (and indexes).
    prefix = f"contract{next(_namespaces)}-{uuid.uuid4().hex[:8]}"

    async def make() -> CacheStore:
        store = RedisStore(_redis_url(), prefix=prefix)
        await store.open()
        return store

    return make


BACKENDS = {"embedded": embedded_factory, "redis": redis_factory}
_REDIS: list[RedisProcess] = []


def _redis_url() -> str:
    assert _REDIS, "the redis_server fixture starts it"
    return _REDIS[0].url


@pytest.fixture(scope="session", autouse=True)
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    server = RedisProcess(tmp_path_factory.mktemp("contract-redis")).start()
    _REDIS.append(server)
    yield
    server.stop()
    _REDIS.clear()


@pytest.fixture(params=sorted(BACKENDS))
async def factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return await BACKENDS[request.param](tmp_path)


@pytest.fixture()
async def store(factory: StoreFactory) -> AsyncIterator[CacheStore]:
    s = await factory()
    yield s
    await s.close()


async def test_put_then_get_and_search(store: CacheStore) -> None:
    e = entry("how to boil an egg")
    await store.put(e, vec(1, 0), 10, NOW)
    assert await store.get("c1", e.id, NOW) == e
    found = await store.search("c1", vec(1, 0.1), 3, 0.9, {}, NOW)
    assert [(f.id, round(s, 4)) for f, s in found] == [
        (e.id, round(float(vec(1, 0) @ vec(1, 0.1)), 4))
    ]
    assert await store.count("c1", NOW) == 1


async def test_search_is_best_first_within_threshold(store: CacheStore) -> None:
    for i, v in enumerate([vec(1, 0), vec(1, 1), vec(0, 1)]):
        await store.put(entry(f"p{i}"), v, 10, NOW)
    found = await store.search("c1", vec(1, 0.2), 3, 0.5, {}, NOW)
    assert [f.prompt for f, _ in found] == ["p0", "p1"]
    assert found[0][1] > found[1][1]


async def test_caches_and_attributes_scope_everything(store: CacheStore) -> None:
    await store.put(entry("q", cache_id="c1", user="ann"), vec(1), 10, NOW)
    await store.put(entry("q", cache_id="c1", user="bob"), vec(1), 10, NOW)
    await store.put(entry("q", cache_id="c2"), vec(1), 10, NOW)
    assert len(await store.search("c1", vec(1), 5, 0.5, {}, NOW)) == 2
    ann = await store.search("c1", vec(1), 5, 0.5, {"user": "ann"}, NOW)
    assert [f.attributes for f, _ in ann] == [{"user": "ann"}]
    assert await store.search("c1", vec(1), 5, 0.5, {"user": "eve"}, NOW) == []
    assert len(await store.search("c2", vec(1), 5, 0.5, {}, NOW)) == 1
    assert await store.search("c3", vec(1), 5, 0.5, {}, NOW) == []
    exact = await store.find_exact("c1", "  q ", {"user": "bob"}, NOW)
    assert exact is not None and exact.attributes == {"user": "bob"}
    assert await store.find_exact("c1", "Q", {}, NOW) is None


async def test_same_id_replaces(store: CacheStore) -> None:
    e = entry("same")
    await store.put(e, vec(1), 10, NOW)
    newer = CacheEntry(**{**e.__dict__, "response": "new answer"})
    await store.put(newer, vec(0, 1), 10, NOW + 1)
    assert await store.count("c1", NOW) == 1
    got = await store.get("c1", e.id, NOW)
    assert got is not None and got.response == "new answer"
    assert await store.search("c1", vec(1), 1, 0.9, {}, NOW) == []


async def test_least_recently_used_is_evicted_beyond_the_cap(store: CacheStore) -> None:
    entries = [entry(f"p{i}") for i in range(3)]
    for i, e in enumerate(entries):
        await store.put(e, vec(1, i), 3, NOW + i)
    await store.touch("c1", entries[0].id, NOW + 10)  # p0 becomes the most recently used
    outcome = await store.put(entry("p3"), vec(0, 0, 1), 3, NOW + 11)
    assert outcome.evicted == 1
    assert await store.get("c1", entries[1].id, NOW) is None  # p1 was least recently used
    assert await store.get("c1", entries[0].id, NOW) is not None
    assert await store.count("c1", NOW) == 3


async def test_expired_entries_are_never_returned_and_get_purged(store: CacheStore) -> None:
    short = entry("short", ttl=10)
    await store.put(short, vec(1), 10, NOW)
    await store.put(entry("long"), vec(1, 0.1), 10, NOW)
    later = NOW + 11
    assert await store.get("c1", short.id, later) is None
    assert await store.find_exact("c1", "short", {}, later) is None
    assert [f.prompt for f, _ in await store.search("c1", vec(1), 5, 0.5, {}, later)] == ["long"]
    assert await store.count("c1", later) == 1
    outcome = await store.purge_expired(later)
    assert dict(outcome.expired) == {"c1": 1}
    assert (await store.purge_expired(later)).expired == {}


async def test_delete_delete_matching_and_flush(store: CacheStore) -> None:
    a = entry("a", team="x")
    await store.put(a, vec(1), 10, NOW)
    await store.put(entry("b", team="x", lang="en"), vec(0, 1), 10, NOW)
    await store.put(entry("c", team="y"), vec(0, 0, 1), 10, NOW)
    await store.put(entry("d", cache_id="other", team="x"), vec(1), 10, NOW)
    assert await store.delete("c1", a.id)
    assert not await store.delete("c1", a.id)
    assert await store.delete_matching("c1", {"team": "x"}) == 1
    assert await store.count("c1", NOW) == 1
    assert await store.flush("c1") == 1
    assert await store.count("c1", NOW) == 0
    assert await store.count("other", NOW) == 1
    assert await store.search("c1", vec(0, 0, 1), 5, 0.0, {}, NOW) == []


async def test_everything_acknowledged_survives_a_reopen(factory: StoreFactory) -> None:
    store = await factory()
    kept = [entry(f"p{i}", ttl=1000 if i % 2 else None, tag=str(i)) for i in range(20)]
    for i, e in enumerate(kept):
        await store.put(e, vec(1, i / 10), 100, NOW)
    await store.delete("c1", kept[0].id)
    await store.close()
    reopened = await factory()
    try:
        assert await reopened.count("c1", NOW) == 19
        for e in kept[1:]:
            assert await reopened.get("c1", e.id, NOW) == e
        found = await reopened.search("c1", vec(1, 0.5), 1, 0.99, {"tag": "5"}, NOW)
        assert [f.id for f, _ in found] == [kept[5].id]
    finally:
        await reopened.close()


async def test_a_vector_of_another_dimension_is_refused(factory: StoreFactory) -> None:
    small = np.full(4, 0.5, dtype=np.float32)
    # The embedding model changed under a cache that holds entries: refused, nothing lost,
    # also by a store opened afterwards (which learns the dimension from what is stored).
    first = await factory()
    kept = entry("kept")
    await first.put(kept, vec(1), 10, NOW)
    with pytest.raises(StoreConflictError, match="8-dim"):
        await first.put(entry("other"), small, 10, NOW)
    await first.close()
    reopened = await factory()
    try:
        with pytest.raises(StoreConflictError, match="8-dim"):
            await reopened.put(entry("other"), small, 10, NOW)
        assert await reopened.get("c1", kept.id, NOW) == kept
        assert await reopened.count("c1", NOW) == 1
        # Another cache is free to use another dimension.
        await reopened.put(entry("small", cache_id="c2"), small, 10, NOW)
        assert await reopened.count("c2", NOW) == 1
    finally:
        await reopened.close()


async def test_counters_are_kept_by_the_store(store: CacheStore) -> None:
    await store.put(entry("first"), vec(1), 10, NOW)
    await store.add_counters("c1", {"hits": 2, "misses": 1})
    await store.add_counters("c1", {"hits": 1})
    counts = await store.counters("c1")
    assert (counts.get("hits"), counts.get("misses")) == (3, 1)
    for i in range(3):
        await store.put(entry(f"p{i}"), vec(1, i), 2, NOW + i)
    assert (await store.counters("c1")).get("evictions") == 2
    await store.reset_counters("c1")
    assert await store.counters("c1") == {}
    assert await store.counters("other") == {}


async def test_unknown_cache_ids_leave_nothing_behind(store: CacheStore) -> None:
    # Look-ups under made-up cache ids must not grow the store.
    for i in range(50):
        await store.add_counters(f"made-up-{i}", {"misses": 1})
        assert await store.search(f"made-up-{i}", vec(1), 1, 0.5, {}, NOW) == []
    assert await store.counters("made-up-7") == {}
    assert await store.admits("made-up-7", 1)  # no cache is held yet


async def test_the_number_of_caches_is_bounded(store: CacheStore) -> None:
    await store.put(entry("a", cache_id="one"), vec(1), 10, NOW)
    await store.put(entry("b", cache_id="two"), vec(1), 10, NOW)
    assert await store.admits("one", 2) and await store.admits("two", 2)
    assert not await store.admits("three", 2)
    assert await store.admits("three", 3)
    # Deleting its entries keeps a cache (and its counters) until it is flushed.
    await store.delete("one", entry("a", cache_id="one").id)
    assert not await store.admits("three", 2)
    await store.flush("one")
    assert await store.admits("three", 2)
