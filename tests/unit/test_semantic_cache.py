"""SemanticCache behaviour with a fake embedder and upstream (the store is the real embedded
one on a temp folder, since it is in-process)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cache_server.cache import CachePolicy, SemanticCache
from cache_server.embedder_client import EmbedderUnavailableError
from cache_server.entries import EntryNotFoundError, InvalidInputError
from cache_server.lookup import Strategy
from cache_server.store.embedded import EmbeddedStore
from cache_server.upstream import UpstreamError
from tests.unit.fakes import DIM, Clock, FakeEmbedder, FakeUpstream, Parts


async def test_miss_asks_the_llm_then_a_paraphrase_hits(parts: Parts) -> None:
    cache, _, upstream, _ = parts
    first = await cache.query("", "How do I learn Python?")
    assert first.hit is None and first.response == "LLM says: How do I learn Python?"
    second = await cache.query("", "What is the best way to learn Python?")
    assert second.hit is not None and second.hit.strategy is Strategy.SEMANTIC
    assert second.response == first.response
    assert second.hit.similarity >= 0.85
    assert second.hit.entry.prompt == "How do I learn Python?"
    assert second.embedding_dimension == DIM
    assert len(upstream.calls) == 1
    unrelated = await cache.query("", "How do I cook rice?")
    assert unrelated.hit is None and len(upstream.calls) == 2


async def test_exact_repeat_needs_no_embedder(parts: Parts) -> None:
    cache, embedder, _, _ = parts
    await cache.query("", "How do I learn Python?")
    embedder.down = True
    again = await cache.query("", "  How do I learn Python?  ")
    assert again.hit is not None and again.hit.strategy is Strategy.EXACT
    assert again.hit.similarity == 1.0
    with pytest.raises(EmbedderUnavailableError):
        await cache.query("", "What is the best way to learn Python?")


async def test_answers_carry_the_dimension_before_the_model_was_learned(parts: Parts) -> None:
    """Right after start the cache server may not have asked the embedder what it serves:
    every kind of answer must still report the real dimension, never 0."""
    cache, embedder, _, _ = parts
    embedder.model = None
    miss = await cache.query("", "How do I learn Python?")
    assert miss.hit is None and miss.embedding_dimension == DIM
    embedder.model = None
    semantic = await cache.query("", "What is the best way to learn Python?")
    assert semantic.hit is not None and semantic.hit.strategy is Strategy.SEMANTIC
    assert semantic.embedding_dimension == DIM
    embedder.model = None
    exact = await cache.query("", "How do I learn Python?")
    assert exact.hit is not None and exact.embedding_dimension == DIM
    embedder.model = None
    found = await cache.search("", "What is the best way to learn Python?")
    assert found.hits and found.embedding_dimension == DIM


async def test_exact_repeat_with_the_embedder_never_reached_reports_the_stored_dimension(
    parts: Parts,
) -> None:
    cache, embedder, _, _ = parts
    await cache.query("", "How do I learn Python?")
    embedder.model, embedder.down = None, True
    again = await cache.query("", "How do I learn Python?")
    assert again.hit is not None and again.hit.strategy is Strategy.EXACT
    assert again.embedding_dimension == DIM


async def test_per_request_threshold(parts: Parts) -> None:
    cache, _, _, _ = parts
    await cache.query("", "How do I learn Python?")
    strict = await cache.query("", "What is the best way to learn Python?", threshold=0.9999)
    assert strict.hit is None
    with pytest.raises(InvalidInputError, match="outside"):
        await cache.query("", "x", threshold=1.5)
    with pytest.raises(InvalidInputError):
        await cache.query("", "x", threshold=float("nan"))


async def test_scopes_never_leak(parts: Parts) -> None:
    cache, _, _, _ = parts
    await cache.set("tenant-a", "How do I learn Python?", "A's answer", attributes={"user": "1"})
    assert (await cache.search("tenant-b", "How do I learn Python?")).hits == []
    assert (
        await cache.search("tenant-a", "How do I learn Python?", attributes={"user": "2"})
    ).hits == []
    hits = (await cache.search("tenant-a", "How do I learn Python?", attributes={"user": "1"})).hits
    assert [h.entry.response for h in hits] == ["A's answer"]
    assert len((await cache.search("tenant-a", "How do I learn Python?")).hits) == 1


async def test_lru_eviction_refreshed_by_hits(parts: Parts) -> None:
    cache, _, _, clock = parts
    for i, prompt in enumerate(["alpha question", "beta question", "gamma question"]):
        clock.now += 1
        await cache.set("", prompt, f"answer {i}")
    clock.now += 1
    assert (await cache.query("", "alpha question")).hit is not None  # refreshes alpha
    await cache.drain()  # the refresh is written after the answer, in the background
    clock.now += 1
    await cache.set("", "delta question", "answer 3")
    remaining = {
        p
        for p in ["alpha question", "beta question", "gamma question", "delta question"]
        if (await cache.search("", p, strategies=[Strategy.EXACT])).hits
    }
    assert remaining == {"alpha question", "gamma question", "delta question"}
    assert (await cache.stats_of("")).counters.evictions == 1


async def test_ttl_expiry(parts: Parts) -> None:
    cache, _, _, clock = parts
    await cache.set("", "How do I learn Python?", "soon gone", ttl_s=60)
    clock.now += 59
    assert (await cache.search("", "How do I learn Python?")).hits
    clock.now += 2
    assert (await cache.search("", "How do I learn Python?")).hits == []
    assert await cache.purge_expired() == 1
    stats = await cache.stats_of("")
    assert stats.counters.expirations == 1 and stats.cache_size == 0


async def test_concurrent_misses_call_the_llm_once(parts: Parts) -> None:
    cache, _, upstream, _ = parts
    upstream.delay_s = 0.05
    results = await asyncio.gather(*(cache.query("", "How do I cook rice?") for _ in range(10)))
    assert len(upstream.calls) == 1
    assert {r.response for r in results} == {"LLM says: How do I cook rice?"}
    # Another scope is another flight.
    await cache.query("", "How do I cook rice?", attributes={"user": "x"}, use_cache=False)
    assert len(upstream.calls) == 2


async def test_upstream_failure_stores_nothing(parts: Parts) -> None:
    cache, _, upstream, _ = parts
    upstream.fail = True
    with pytest.raises(UpstreamError):
        await cache.query("", "How do I cook rice?")
    assert (await cache.stats_of("")).cache_size == 0
    upstream.fail = False
    assert (await cache.query("", "How do I cook rice?")).hit is None


async def test_misses_are_counted_in_new_caches_and_when_the_llm_fails(parts: Parts) -> None:
    cache, _, upstream, _ = parts
    await cache.query("fresh", "How do I learn Python?")  # opens the cache: its miss counts
    assert (await cache.stats_of("fresh")).counters.misses == 1
    upstream.fail = True
    with pytest.raises(UpstreamError):  # the upstream's error, not a counting failure
        await cache.query("fresh", "How do I cook rice?")
    counters = (await cache.stats_of("fresh")).counters
    assert (counters.misses, counters.hits) == (2, 0)
    # Under a cache id that holds nothing, a failed miss leaves nothing behind.
    with pytest.raises(UpstreamError):
        await cache.query("nowhere", "How do I cook rice?")
    assert (await cache.stats_of("nowhere")).counters.misses == 0


async def test_one_cache_too_many_is_refused_before_the_llm_is_asked(tmp_path: Path) -> None:
    from cache_server.store.base import CacheLimitError

    store = EmbeddedStore(tmp_path)
    await store.open()
    upstream = FakeUpstream()
    cache = SemanticCache(store, FakeEmbedder(), upstream, CachePolicy(max_caches=1), Clock())
    try:
        await cache.set("one", "How do I learn Python?", "read the tutorial")
        with pytest.raises(CacheLimitError, match="at most 1 caches"):
            await cache.set("two", "How do I cook rice?", "boil it")
        with pytest.raises(CacheLimitError):
            await cache.query("two", "How do I cook rice?")
        assert upstream.calls == []
        assert (await cache.query("one", "How do I cook rice?")).hit is None  # room inside
        await cache.flush("one")
        await cache.set("two", "How do I cook rice?", "boil it")
    finally:
        await store.close()


async def test_use_cache_false_skips_lookup_but_stores(parts: Parts) -> None:
    cache, _, _, _ = parts
    await cache.set("", "How do I learn Python?", "old answer")
    fresh = await cache.query("", "How do I learn Python?", use_cache=False)
    assert fresh.hit is None and fresh.response == "LLM says: How do I learn Python?"
    again = await cache.query("", "How do I learn Python?")
    assert again.hit is not None and again.response == "LLM says: How do I learn Python?"


async def test_deletes_flush_and_stats(parts: Parts) -> None:
    cache, _, _, _ = parts
    keep = await cache.set("", "How do I cook rice?", "r", attributes={"lang": "en"})
    gone = await cache.set("", "How do I learn Python?", "p", attributes={"lang": "fr"})
    await cache.delete("", gone)
    with pytest.raises(EntryNotFoundError):
        await cache.delete("", gone)
    with pytest.raises(EntryNotFoundError):  # an id that cannot exist is simply not found
        await cache.delete("", "nope")
    with pytest.raises(InvalidInputError, match="32 lowercase hex"):
        await cache.delete("", "x" * 1000)
    assert await cache.delete_matching("", {"lang": "en"}) == 1
    await cache.set("", "How do I cook rice?", "r")
    await cache.query("", "How do I cook rice?")
    await cache.query("", "something never seen")
    stats = await cache.stats_of("")
    assert (stats.counters.hits, stats.counters.misses) == (1, 1)
    assert stats.counters.hit_rate == 0.5
    assert stats.cache_size == 2 and stats.max_cache_size == 3 and stats.threshold == 0.85
    assert keep
    assert await cache.flush("") == 2
    assert (await cache.stats_of("")).counters.hits == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cache_id": "bad id!"}, "cache_id"),
        ({"query": ""}, "query is empty"),
        ({"query": "x" * 9000}, "9000 characters"),
        ({"attributes": {"": "v"}}, "attribute name"),
        ({"attributes": {"k": ""}}, "must have a value"),
        ({"ttl_s": -1.0}, "ttl_seconds"),
    ],
)
async def test_bad_input_is_refused_clearly(
    parts: Parts, kwargs: dict[str, Any], message: str
) -> None:
    cache, _, upstream, _ = parts
    args = {"cache_id": "", "query": "fine"} | kwargs
    with pytest.raises(InvalidInputError, match=message):
        await cache.query(args.pop("cache_id"), args.pop("query"), **args)
    assert upstream.calls == []


def test_lookup_latency_remembers_a_bounded_number_of_caches() -> None:
    from cache_server.stats import LookupLatency

    latency = LookupLatency(max_caches=3)
    for i in range(10):
        latency.record(f"cache-{i}", hit=False, seconds=0.001 * (i + 1))
    latency.record("cache-7", hit=True, seconds=0.5)  # used again: kept longest
    latency.record("cache-10", hit=True, seconds=0.5)
    assert len(latency) == 3
    assert list(latency.of("cache-7")) == [0.008, 0.5]
    assert list(latency.of("cache-9")) == [0.010]
    assert not latency.of("cache-8") and not latency.of("cache-0")


async def test_a_model_change_of_the_same_dimension_is_refused_not_compared(
    parts: Parts,
) -> None:
    """Issue 23, finding 6: after `make finetune` (still 384 dims) vectors of the old model were
    compared with queries of the new one, silently."""
    from cache_server.embedder_client import EmbedderModel
    from cache_server.store.base import StoreConflictError

    cache, embedder, upstream, _ = parts
    await cache.query("", "How do I learn Python?")
    embedder.model = EmbedderModel("fake-tuned", DIM, False, onnx_sha256="b" * 64)
    exact = await cache.query("", "How do I learn Python?")  # needs no vector: still served
    assert exact.hit is not None and exact.hit.strategy is Strategy.EXACT
    calls = len(upstream.calls)
    for ask in (
        cache.query("", "What is the best way to learn Python?"),
        cache.search("", "What is the best way to learn Python?"),
        cache.set("", "How do I cook rice?", "Boil it."),
    ):
        with pytest.raises(StoreConflictError, match="make reindex"):  # ModelMismatchError
            await ask
    assert len(upstream.calls) == calls  # refused before paying for an answer


async def test_made_up_cache_ids_cannot_grow_the_store_through_policies(
    tmp_path: Path,
) -> None:
    """Issue 23, finding 8: `PUT .../policy` created state for any cache id, held or not."""
    from cache_server.store.base import CacheLimitError

    store = EmbeddedStore(tmp_path)
    await store.open()
    policy = CachePolicy(max_caches=2)
    cache = SemanticCache(store, FakeEmbedder(), FakeUpstream(), policy, Clock())
    await cache.set_cache_policy("first", "verified", 0.05)  # before its first entry: fine
    await cache.set_cache_policy("second", "threshold", None)
    with pytest.raises(CacheLimitError, match="max_caches"):
        await cache.set_cache_policy("made-up", "verified", 0.05)
    await cache.set_cache_policy("first", "verified", 0.1)  # changing one set is fine
    await cache.set_cache_policy("second", None, None)  # a reset frees its place
    await cache.set_cache_policy("made-up", "verified", 0.05)
    assert await store.policy_count() == 2
    await store.close()


async def test_a_miss_before_the_caches_first_entry_is_counted(parts: Parts) -> None:
    """Issue 23, finding 8: a search (or chat) miss in a cache the store did not hold yet was
    dropped: the store keeps counters only for the caches it holds."""
    cache, _, _, _ = parts
    missed = await cache.search("new-cache", "How do I learn Python?")
    assert missed.hits == []
    await cache.set("new-cache", "How do I learn Python?", "Practice.")
    hit = await cache.search("new-cache", "What is the best way to learn Python?")
    assert hit.hits
    counters = (await cache.stats_of("new-cache")).counters
    assert (counters.misses, counters.hits) == (1, 1)
    await cache.search("made-up", "How do I cook rice?")  # never stored: nothing kept
    assert (await cache.stats_of("made-up")).counters.misses == 0
