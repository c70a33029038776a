"""How full the store is, as Prometheus gauges: entries in all, caches, and the fullest
cache against max_cache_size (what the "store full" alert reads). Measured by the purger's
loop (SemanticCache.run_purger) at most every MEASURE_EVERY_S seconds, since a store shared by
replicas (Redis) is asked once per cache. Every replica of a shared store reports the same
figures: aggregate them with max(), not sum()."""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from cache_server.metrics import REGISTRY
from cache_server.store.base import CacheStore

log = logging.getLogger(__name__)
MEASURE_EVERY_S = 30.0

ENTRIES = Gauge(
    "semcache_cache_entries", "Live entries in the store, all caches together", registry=REGISTRY
)
CACHES = Gauge("semcache_cache_caches", "Caches holding entries", registry=REGISTRY)
FULLEST = Gauge(
    "semcache_cache_fullest_cache_ratio",
    "Entries of the fullest cache / max_cache_size (1: it evicts on every new answer)",
    registry=REGISTRY,
)
MAX_ENTRIES = Gauge(
    "semcache_cache_max_entries_per_cache",
    "max_cache_size: entries a cache holds before the least recently used go",
    registry=REGISTRY,
)


async def measure(store: CacheStore, max_cache_size: int, now: float) -> None:
    """Counts every cache's live entries and sets the gauges."""
    sizes = [await store.count(cache_id, now) for cache_id in await store.cache_ids()]
    sizes = [size for size in sizes if size > 0]
    ENTRIES.set(sum(sizes))
    CACHES.set(len(sizes))
    FULLEST.set(max(sizes, default=0) / max_cache_size if max_cache_size else 0.0)
    MAX_ENTRIES.set(max_cache_size)
