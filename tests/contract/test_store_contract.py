"""One contract for every CacheStore backend. A new backend joins by adding itself to
`stores.BACKENDS`; each test gets a fresh, empty store."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from cache_server.entries import AnswerCost, CacheEntry
from cache_server.store.base import CacheLimitError, CacheStore, PutOutcome, StoreConflictError
from tests.contract.stores import (
    ADVERSARIAL_CACHE_IDS,
    DIM,
    NOW,
    StoreFactory,
    entry,
    put,
    vec,
)


async def test_put_then_get_and_search(store: CacheStore) -> None:
    e = entry("how to boil an egg")
    await put(store, e, vec(1, 0), 10, NOW)
    assert await store.get("c1", e.id, NOW) == e
    found = await store.search("c1", vec(1, 0.1), 3, 0.9, {}, NOW)
    assert [(f.id, round(s, 4)) for f, s in found] == [
        (e.id, round(float(vec(1, 0) @ vec(1, 0.1)), 4))
    ]
    assert await store.count("c1", NOW) == 1


async def test_search_is_best_first_within_threshold(store: CacheStore) -> None:
    for i, v in enumerate([vec(1, 0), vec(1, 1), vec(0, 1)]):
        await put(store, entry(f"p{i}"), v, 10, NOW)
    found = await store.search("c1", vec(1, 0.2), 3, 0.5, {}, NOW)
    assert [f.prompt for f, _ in found] == ["p0", "p1"]
    assert found[0][1] > found[1][1]


async def test_caches_and_attributes_scope_everything(store: CacheStore) -> None:
    await put(store, entry("q", cache_id="c1", user="ann"), vec(1), 10, NOW)
    await put(store, entry("q", cache_id="c1", user="bob"), vec(1), 10, NOW)
    await put(store, entry("q", cache_id="c2"), vec(1), 10, NOW)
    assert len(await store.search("c1", vec(1), 5, 0.5, {}, NOW)) == 2
    ann = await store.search("c1", vec(1), 5, 0.5, {"user": "ann"}, NOW)
    assert [f.attributes for f, _ in ann] == [{"user": "ann"}]
    assert await store.search("c1", vec(1), 5, 0.5, {"user": "eve"}, NOW) == []
    assert len(await store.search("c2", vec(1), 5, 0.5, {}, NOW)) == 1
    assert await store.search("c3", vec(1), 5, 0.5, {}, NOW) == []
    exact = await store.find_exact("c1", "  q ", {"user": "bob"}, NOW)
    assert exact is not None and exact.attributes == {"user": "bob"}
    assert await store.find_exact("c1", "Q", {}, NOW) is None


async def test_an_entry_of_a_scope_is_found_only_by_look_ups_naming_that_scope(
    store: CacheStore,
) -> None:
    """Issue 23, finding 1: a chat answer (stored with its chat_scope) was an exact and a
    semantic hit for a plain look-up with no attributes. Scope attributes are not filters: an
    entry carrying one is found only by a look-up naming it with the same value."""
    await put(store, entry("what is 2+2", chat_scope="pirate", user="ann"), vec(1), 10, NOW)
    await put(store, entry("what is 2+2", lc_scope="llm-a"), vec(1), 10, NOW)
    for wanted in ({}, {"user": "ann"}, {"chat_scope": "number-only"}, {"lc_scope": "llm-b"}):
        assert await store.find_exact("c1", "what is 2+2", wanted, NOW) is None, wanted
        assert await store.search("c1", vec(1), 5, 0.5, wanted, NOW) == [], wanted
    pirate = {"chat_scope": "pirate"}
    exact = await store.find_exact("c1", "what is 2+2", pirate, NOW)
    assert exact is not None and exact.attributes == {"chat_scope": "pirate", "user": "ann"}
    found = await store.search("c1", vec(1), 5, 0.5, {**pirate, "user": "ann"}, NOW)
    assert [f.attributes for f, _ in found] == [{"chat_scope": "pirate", "user": "ann"}]
    found = await store.search("c1", vec(1), 5, 0.5, {"lc_scope": "llm-a"}, NOW)
    assert [f.attributes for f, _ in found] == [{"lc_scope": "llm-a"}]
    # A plain entry beside them is what a plain look-up finds, exactly and by similarity.
    await put(store, entry("what is 2+2"), vec(1, 0.01), 10, NOW)
    plain = await store.find_exact("c1", "what is 2+2", {}, NOW)
    assert plain is not None and plain.attributes == {}
    assert [f.attributes for f, _ in await store.search("c1", vec(1), 5, 0.5, {}, NOW)] == [{}]
    # Deleting by attributes is not a look-up: it reaches every entry carrying them.
    assert await store.delete_matching("c1", {"user": "ann"}) == 1


async def test_same_id_replaces(store: CacheStore) -> None:
    e = entry("same")
    await put(store, e, vec(1), 10, NOW)
    newer = CacheEntry(**{**e.__dict__, "response": "new answer"})
    await put(store, newer, vec(0, 1), 10, NOW + 1)
    assert await store.count("c1", NOW) == 1
    got = await store.get("c1", e.id, NOW)
    assert got is not None and got.response == "new answer"
    assert await store.search("c1", vec(1), 1, 0.9, {}, NOW) == []


async def test_least_recently_used_is_evicted_beyond_the_cap(store: CacheStore) -> None:
    entries = [entry(f"p{i}") for i in range(3)]
    for i, e in enumerate(entries):
        await put(store, e, vec(1, i), 3, NOW + i)
    await store.touch("c1", entries[0].id, NOW + 10)  # p0 becomes the most recently used
    outcome = await put(store, entry("p3"), vec(0, 0, 1), 3, NOW + 11)
    assert outcome.evicted == 1
    assert await store.get("c1", entries[1].id, NOW) is None  # p1 was least recently used
    assert await store.get("c1", entries[0].id, NOW) is not None
    assert await store.count("c1", NOW) == 3


async def test_expired_entries_are_never_returned_and_get_purged(store: CacheStore) -> None:
    short = entry("short", ttl=10)
    await put(store, short, vec(1), 10, NOW)
    await put(store, entry("long"), vec(1, 0.1), 10, NOW)
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
    await put(store, a, vec(1), 10, NOW)
    await put(store, entry("b", team="x", lang="en"), vec(0, 1), 10, NOW)
    await put(store, entry("c", team="y"), vec(0, 0, 1), 10, NOW)
    await put(store, entry("d", cache_id="other", team="x"), vec(1), 10, NOW)
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
        await put(store, e, vec(1, i / 10), 100, NOW)
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
    await put(first, kept, vec(1), 10, NOW)
    with pytest.raises(StoreConflictError, match="8-dim"):
        await put(first, entry("other"), small, 10, NOW)
    await first.close()
    reopened = await factory()
    try:
        with pytest.raises(StoreConflictError, match="8-dim"):
            await put(reopened, entry("other"), small, 10, NOW)
        assert await reopened.get("c1", kept.id, NOW) == kept
        assert await reopened.count("c1", NOW) == 1
        # Another cache is free to use another dimension.
        await put(reopened, entry("small", cache_id="c2"), small, 10, NOW)
        assert await reopened.count("c2", NOW) == 1
    finally:
        await reopened.close()


async def test_counters_are_kept_by_the_store(store: CacheStore) -> None:
    await put(store, entry("first"), vec(1), 10, NOW)
    assert await store.add_counters("c1", {"hits": 2, "misses": 1})
    assert await store.add_counters("c1", {"hits": 1})
    counts = await store.counters("c1")
    assert (counts.get("hits"), counts.get("misses")) == (3, 1)
    for i in range(3):
        await put(store, entry(f"p{i}"), vec(1, i), 2, NOW + i)
    assert (await store.counters("c1")).get("evictions") == 2
    await store.reset_counters("c1")
    assert await store.counters("c1") == {}
    assert await store.counters("other") == {}


async def test_unknown_cache_ids_leave_nothing_behind(store: CacheStore) -> None:
    # Look-ups under made-up cache ids must not grow the store.
    for i in range(50):
        assert not await store.add_counters(f"made-up-{i}", {"misses": 1})
        assert await store.search(f"made-up-{i}", vec(1), 1, 0.5, {}, NOW) == []
    assert await store.counters("made-up-7") == {}
    assert await store.admits("made-up-7", 1)  # no cache is held yet


async def test_the_number_of_caches_is_bounded(store: CacheStore) -> None:
    await put(store, entry("a", cache_id="one"), vec(1), 10, NOW)
    await put(store, entry("b", cache_id="two"), vec(1), 10, NOW)
    assert await store.admits("one", 2) and await store.admits("two", 2)
    assert not await store.admits("three", 2)
    assert await store.admits("three", 3)
    # Deleting its entries keeps a cache (and its counters) until it is flushed.
    await store.delete("one", entry("a", cache_id="one").id)
    assert not await store.admits("three", 2)
    await store.flush("one")
    assert await store.admits("three", 2)


async def test_adversarial_cache_ids_never_see_each_others_entries(store: CacheStore) -> None:
    # Every cache holds the same prompt, vector and attributes: any overlap of key spaces or
    # index prefixes shows up as a foreign hit, a foreign delete or a wrong count.
    ids = ADVERSARIAL_CACHE_IDS
    held = {}
    for cache_id in ids:
        e = entry("the same prompt", cache_id=cache_id, team="x")
        await put(store, e, vec(1))
        await put(store, entry("short lived", cache_id=cache_id, ttl=10), vec(0, 1))
        await store.add_counters(cache_id, {"hits": 1})
        held[cache_id] = e
    for cache_id, e in held.items():
        found = await store.search(cache_id, vec(1), 50, 0.5, {}, NOW)
        assert [(f.cache_id, f.id) for f, _ in found] == [(cache_id, e.id)], cache_id
        exact = await store.find_exact(cache_id, "the same prompt", {"team": "x"}, NOW)
        assert exact == e, cache_id
        assert await store.count(cache_id, NOW) == 2, cache_id
        assert await store.get(cache_id, e.id, NOW) == e
        assert (await store.counters(cache_id)).get("hits") == 1, cache_id
    later = NOW + 11
    assert dict((await store.purge_expired(later)).expired) == dict.fromkeys(ids, 1)
    # Deleting, deleting by attributes and flushing in one cache touch no other.
    a, a_e, a_e_x = ids[0], ids[1], ids[2]
    assert not await store.delete(a, held[a_e].id)
    assert await store.delete_matching(a, {"team": "x"}) == 1
    assert await store.flush(a_e) == 1
    for cache_id in ids:
        expected = 0 if cache_id in (a, a_e) else 1
        assert await store.count(cache_id, later) == expected, cache_id
        found = await store.search(cache_id, vec(1), 50, 0.5, {}, later)
        assert [f.id for f, _ in found] == ([held[cache_id].id] if expected else []), cache_id
    assert await store.get(a_e_x, held[a_e_x].id, later) == held[a_e_x]


async def test_a_flushed_cache_takes_vectors_of_another_dimension(factory: StoreFactory) -> None:
    first = await factory()
    await put(first, entry("old model"), vec(1))
    with pytest.raises(StoreConflictError, match="8-dim"):
        await put(first, entry("new model"), vec(1, dim=4))
    assert await first.flush("c1") == 1
    try:
        e = entry("new model")
        await put(first, e, vec(1, dim=4))
        found = await first.search("c1", vec(1, dim=4), 5, 0.5, {}, NOW)
        assert [f.id for f, _ in found] == [e.id]
        assert first.vector_dimension("c1") == 4
    finally:
        await first.close()


async def test_check_dimension_refuses_another_dimension_before_any_write(
    factory: StoreFactory,
) -> None:
    store = await factory()
    await store.check_dimension("c1", 8)  # a cache not held yet takes any dimension
    await put(store, entry("kept"), vec(1))
    await store.check_dimension("c1", 8)
    with pytest.raises(StoreConflictError, match="cache 'c1' holds 8-dim vectors; got 4"):
        await store.check_dimension("c1", 4)
    await store.check_dimension("c2", 4)
    await store.close()
    reopened = await factory()  # learns the dimension from what is stored
    try:
        with pytest.raises(StoreConflictError, match="8-dim"):
            await reopened.check_dimension("c1", 4)
        await reopened.flush("c1")
        await reopened.check_dimension("c1", 4)
    finally:
        await reopened.close()


async def test_the_entry_just_written_is_never_evicted(store: CacheStore) -> None:
    a, b, c = entry("a"), entry("b"), entry("c")
    await put(store, a, vec(1), 2, NOW)
    await put(store, b, vec(0, 1), 2, NOW)
    await store.touch("c1", a.id, NOW + 100)
    await store.touch("c1", b.id, NOW + 101)
    # Written with an older clock than the last uses: the least recent of all, yet kept.
    outcome = await put(store, c, vec(0, 0, 1), 2, NOW + 1)
    assert outcome.evicted == 1
    assert await store.get("c1", c.id, NOW + 1) == c
    assert await store.get("c1", a.id, NOW + 1) is None
    assert await store.count("c1", NOW + 1) == 2


async def test_max_caches_holds_under_concurrent_first_writes(store: CacheStore) -> None:
    async def first_write(i: int) -> PutOutcome:
        return await put(store, entry("q", cache_id=f"new{i}"), vec(1), max_caches=2)

    results = await asyncio.gather(*(first_write(i) for i in range(6)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 4 and all(isinstance(r, CacheLimitError) for r in refused), results
    held = [i for i in range(6) if await store.count(f"new{i}", NOW)]
    assert len(held) == 2
    refused_id = next(f"new{i}" for i in range(6) if i not in held)
    assert await store.get(refused_id, entry("q", cache_id=refused_id).id, NOW) is None
    assert not await store.admits(refused_id, 2)
    # A cache already held still takes writes at the limit; a flush frees a place.
    await put(store, entry("more", cache_id=f"new{held[0]}"), vec(1), max_caches=2)
    with pytest.raises(CacheLimitError, match=r"at most 2 caches \(max_caches\)"):
        await put(store, entry("q", cache_id=refused_id), vec(1), max_caches=2)
    await store.flush(f"new{held[0]}")
    await put(store, entry("q", cache_id=refused_id), vec(1), max_caches=2)
    assert await store.count(refused_id, NOW) == 1


async def test_expired_entries_never_crowd_live_ones_out_of_a_look_up(store: CacheStore) -> None:
    # Expired entries not purged yet (Redis has not dropped them either) rank first.
    live = entry("same prompt", variant="live")
    await put(store, live, vec(1, 1), max_entries=100)
    for i in range(25):
        expiring = entry("same prompt", ttl=10, created=NOW + 1, variant=str(i))
        await put(store, expiring, vec(1, 0.01 * i), max_entries=100)
    later = NOW + 12
    found = await store.search("c1", vec(1), 1, 0.5, {}, later)
    assert [f.id for f, _ in found] == [live.id]
    assert await store.find_exact("c1", "same prompt", {}, later) == live


async def test_a_cache_records_its_embedding_model_and_refuses_another(
    store: CacheStore,
) -> None:
    """Issue 23, finding 6: only the dimension was checked, so a same-size model's vectors were
    silently compared with the old model's. The first put naming a model records it."""
    from cache_server.store.base import ModelMismatchError

    assert await store.vector_model("c1") is None
    await store.put(entry("first"), vec(1), 10, NOW, max_caches=10, model="model-a")
    assert await store.vector_model("c1") == "model-a"
    with pytest.raises(ModelMismatchError) as refused:
        await store.put(entry("second"), vec(0, 1), 10, NOW, max_caches=10, model="model-b")
    assert "make reindex" in str(refused.value) and refused.value.held == "model-a"
    with pytest.raises(ModelMismatchError):
        await store.check_dimension("c1", len(vec(1)), "model-b")
    await store.check_dimension("c1", len(vec(1)), "model-a")
    assert [f.prompt for f, _ in await store.search("c1", vec(0, 1), 5, 0.0, {}, NOW)] == ["first"]
    await store.put(entry("same model"), vec(0, 1), 10, NOW, max_caches=10, model="model-a")
    assert await store.vector_model("c2") is None  # per cache
    await store.flush("c1")
    assert await store.vector_model("c1") is None
    await store.put(entry("anew"), vec(1), 10, NOW, max_caches=10, model="model-b")
    assert await store.vector_model("c1") == "model-b"


async def test_vectors_are_replaced_in_place_for_a_reindex(store: CacheStore) -> None:
    a, b = entry("alpha", user="ann"), entry("beta")
    await store.put(a, vec(1), 10, NOW, max_caches=10, model="old")
    await store.put(b, vec(0, 1), 10, NOW, max_caches=10, model="old")
    assert await store.cache_ids() == ["c1"]
    assert await store.entry_ids("c1") == sorted([a.id, b.id])
    gone = entry("gone")
    replaced = await store.replace_vectors("c1", {a.id: vec(0, 1), gone.id: vec(1)})
    assert replaced == 1  # an entry not held is not re-created
    assert await store.get("c1", gone.id, NOW) is None
    found = await store.search("c1", vec(0, 1), 5, 0.99, {}, NOW)
    assert sorted(e.id for e, _ in found) == sorted([a.id, b.id])
    kept = await store.get("c1", a.id, NOW)
    assert kept == a  # nothing but the vector changed
    with pytest.raises(StoreConflictError):
        await store.replace_vectors("c1", {a.id: np.ones(3, dtype=np.float32)})
    await store.set_vector_model("c1", "new")
    assert await store.vector_model("c1") == "new"
    await store.set_vector_model("not-held", "new")
    assert await store.vector_model("not-held") is None


async def test_entries_are_read_with_their_vectors_for_an_export(store: CacheStore) -> None:
    """What an export reads (cache_server.transfer): the live entries asked for, in the
    order asked, each as stored with its vector bit for bit; ids gone or expired left out."""
    cost = AnswerCost(prompt_tokens=3, completion_tokens=40, upstream_seconds=0.25, model="m")
    a = dataclasses.replace(entry("alpha", user="ann"), cost=cost)
    b, short = entry("beta"), entry("short-lived", ttl=10)
    rng = np.random.default_rng(7)
    vectors = {e.id: vec(*rng.standard_normal(DIM)) for e in (a, b, short)}
    for e in (a, b, short):
        await store.put(e, vectors[e.id], 10, NOW, max_caches=10)
    gone = entry("gone")
    asked = [b.id, gone.id, short.id, a.id]
    read = await store.entries_with_vectors("c1", asked, NOW)
    assert [e for e, _ in read] == [b, short, a]
    for e, v in read:
        assert v.dtype == np.float32 and np.array_equal(v, vectors[e.id])
    later = await store.entries_with_vectors("c1", asked, NOW + 20)
    assert [e.id for e, _ in later] == [b.id, a.id]  # `short` has expired
    assert await store.entries_with_vectors("c1", [], NOW) == []
    assert await store.entries_with_vectors("not-held", [a.id], NOW) == []


async def test_what_an_answer_cost_is_kept_with_it(factory: StoreFactory) -> None:
    """The upstream cost stored with an answer comes back from every read, and after a
    reopen: what its hits are credited with (cache_server.savings)."""
    store = await factory()
    cost = AnswerCost(prompt_tokens=12, completion_tokens=345, upstream_seconds=1.5, model="m-1")
    costed = dataclasses.replace(entry("what does it cost"), cost=cost)
    free = entry("stored by set")
    await put(store, costed, vec(1, 0), 10, NOW)
    await put(store, free, vec(0, 1), 10, NOW)
    await store.close()
    store = await factory()
    try:
        assert await store.get("c1", costed.id, NOW) == costed
        exact = await store.find_exact("c1", "what does it cost", {}, NOW)
        assert exact is not None and exact.cost == cost
        found = await store.search("c1", vec(1, 0), 2, 0.0, {}, NOW)
        assert {f.id: f.cost for f, _ in found} == {costed.id: cost, free.id: None}
    finally:
        await store.close()


async def test_counters_outlive_a_restart(factory: StoreFactory) -> None:
    """Hits, misses and savings are what an operator reads to judge the cache: a restart of
    the cache server keeps them (the embedded store saves them with its chores and at close)."""
    store = await factory()
    await put(store, entry("kept"), vec(1), 10, NOW)
    await put(store, entry("flushed", cache_id="c2"), vec(1), 10, NOW)
    assert await store.add_counters("c1", {"hits": 3, "saved_prompt_tokens": 120})
    assert await store.add_counters("c2", {"misses": 1})
    await store.purge_expired(NOW)  # the periodic chores
    assert await store.add_counters("c1", {"hits": 1})
    await store.reset_counters("c2")
    await store.close()
    store = await factory()
    try:
        assert await store.counters("c1") == {"hits": 4, "saved_prompt_tokens": 120}
        assert await store.counters("c2") == {}
    finally:
        await store.close()
