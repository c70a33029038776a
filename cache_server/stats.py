"""Look-up counters and latency. Counters are kept by the store (so that replicas sharing a
store report the same figures); latency percentiles are this process's own."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from cache_server import metrics

T = TypeVar("T")

LATENCY_WINDOW = 4096  # most recent lookups kept for percentiles


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    reported_wrong: int = 0  # served hits the application reported wrong (feedback)
    reported_right: int = 0
    verified_hits: int = 0  # semantic hits the verified policy served
    explorations: int = 0  # near candidates it judged against a fresh answer instead
    explorations_wrong: int = 0  # ... whose cached answer was judged wrong
    lookup_seconds: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW)
    )

    @classmethod
    def of(cls, counts: Mapping[str, int], latencies: collections.deque[float]) -> CacheCounters:
        return cls(
            hits=int(counts.get("hits", 0)),
            misses=int(counts.get("misses", 0)),
            evictions=int(counts.get("evictions", 0)),
            expirations=int(counts.get("expirations", 0)),
            reported_wrong=int(counts.get("reported_wrong", 0)),
            reported_right=int(counts.get("reported_right", 0)),
            verified_hits=int(counts.get("verified_hits", 0)),
            explorations=int(counts.get("explorations", 0)),
            explorations_wrong=int(counts.get("explorations_wrong", 0)),
            lookup_seconds=latencies,
        )

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def lookup_percentiles_ms(self) -> tuple[float, float, float]:
        if not self.lookup_seconds:
            return (0.0, 0.0, 0.0)
        p50, p95, p99 = np.percentile(np.array(self.lookup_seconds) * 1e3, [50, 95, 99])
        return (float(p50), float(p95), float(p99))


class PerCacheRings(Generic[T]):
    """The last `capacity` items of each cache, in this process, for at most `max_caches`
    caches (the one added to longest ago is forgotten first, so made-up cache ids cannot grow
    it). Look-up latencies (LookupLatency) and recent decisions (cache_server.decisions)."""

    def __init__(self, capacity: int, max_caches: int) -> None:
        self._capacity = capacity
        self._max_caches = max_caches
        self._by_cache: collections.OrderedDict[str, collections.deque[T]] = (
            collections.OrderedDict()
        )

    def append(self, cache_id: str, item: T) -> None:
        ring = self._by_cache.get(cache_id)
        if ring is None:
            ring = collections.deque(maxlen=self._capacity)
            self._by_cache[cache_id] = ring
            if len(self._by_cache) > self._max_caches:
                self._by_cache.popitem(last=False)
        else:
            self._by_cache.move_to_end(cache_id)
        ring.append(item)

    def get(self, cache_id: str) -> collections.deque[T] | None:
        return self._by_cache.get(cache_id)

    def forget(self, cache_id: str) -> None:
        self._by_cache.pop(cache_id, None)

    def __len__(self) -> int:
        return len(self._by_cache)


class LookupLatency:
    """Recent look-up latencies per cache, in this process, for at most `max_caches` caches
    (those looked up longest ago are forgotten first, so made-up cache ids cannot grow it)."""

    def __init__(self, max_caches: int = 10_000) -> None:
        self._windows = PerCacheRings[float](LATENCY_WINDOW, max_caches)

    def record(self, cache_id: str, hit: bool, seconds: float) -> None:
        outcome = "hit" if hit else "miss"
        metrics.LOOKUPS.labels(outcome).inc()
        metrics.LOOKUP_SECONDS.labels(outcome).observe(seconds)
        self._windows.append(cache_id, seconds)

    def of(self, cache_id: str) -> collections.deque[float]:
        return self._windows.get(cache_id) or collections.deque(maxlen=LATENCY_WINDOW)

    def __len__(self) -> int:
        return len(self._windows)

    def reset(self, cache_id: str) -> None:
        self._windows.forget(cache_id)
