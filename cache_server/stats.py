"""Per-cache counters and lookup latency, kept in this process."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from cache_server import metrics

LATENCY_WINDOW = 4096  # most recent lookups kept for percentiles


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    lookup_seconds: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW)
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


class CacheStats:
    def __init__(self) -> None:
        self._by_cache: dict[str, CacheCounters] = collections.defaultdict(CacheCounters)

    def of(self, cache_id: str) -> CacheCounters:
        return self._by_cache[cache_id]

    def record_lookup(self, cache_id: str, hit: bool, seconds: float) -> None:
        metrics.LOOKUPS.labels("hit" if hit else "miss").inc()
        metrics.LOOKUP_SECONDS.observe(seconds)
        counters = self._by_cache[cache_id]
        if hit:
            counters.hits += 1
        else:
            counters.misses += 1
        counters.lookup_seconds.append(seconds)

    def reset(self, cache_id: str) -> None:
        self._by_cache.pop(cache_id, None)
