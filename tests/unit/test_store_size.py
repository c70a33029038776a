"""The store gauges: entries in all, caches holding entries, the fullest cache's share of
max_cache_size (what the "store full" alert reads)."""

from __future__ import annotations

from pathlib import Path

from cache_server import store_size
from cache_server.cache import CachePolicy, SemanticCache
from cache_server.metrics import REGISTRY
from cache_server.store.embedded import EmbeddedStore
from tests.unit.fakes import Clock, FakeEmbedder, FakeUpstream


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def test_the_gauges_say_how_full_the_store_is(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    await store.open()
    clock = Clock()
    cache = SemanticCache(
        store, FakeEmbedder(), FakeUpstream(), CachePolicy(max_cache_size=4), clock
    )
    try:
        for i in range(3):
            await cache.set("a", f"question {i}", "answer")
        await cache.set("b", "one question", "answer", ttl_s=10)
        await store_size.measure(store, 4, clock())
        assert gauge("semcache_cache_entries") == 4
        assert gauge("semcache_cache_caches") == 2
        assert gauge("semcache_cache_fullest_cache_ratio") == 0.75
        assert gauge("semcache_cache_max_entries_per_cache") == 4
        # An expired entry is not counted, nor a cache left with none.
        clock.now += 11
        await store_size.measure(store, 4, clock())
        assert gauge("semcache_cache_entries") == 3
        assert gauge("semcache_cache_caches") == 1
    finally:
        await store.close()
