"""Which way RediSearch runs a scoped KNN search on a FLAT index (its "hybrid policy").

A search within attributes is a KNN query with a filter. RediSearch runs it one of two ways:
BATCHES scores every vector of the index once (the brute-force batch iterator computes all
distances on its first batch) and hands out the nearest in batches until k of them pass the
filter: about the cost of an unscoped search, whatever the filter. ADHOC_BF walks the filter
and scores only the entries it yields: cheaper for a small scope, but each entry costs several
times what the batch scan pays for one (the filter's intersection of the scope's tags, the
liveness range and the scope markers, then a distance by label). Left to choose, RediSearch
2.10 took ADHOC_BF for scopes holding a quarter and even half of a FLAT index (768 dims),
which made scoped searches slower than unscoped ones: 1.4x at a quarter, 2.2x at a half
(100k entries; docs/benchmarks.md "Cost as the work grows" had 169 against 92 ms at 1M).

Measured on 100k entries (one scope tag, random unit vectors), ADHOC_BF costs what BATCHES does
at a scope of ~10% of the index at 384 dims and ~15% at 768. So a scoped search on a FLAT
index names the policy: ADHOC_BF below ADHOC_SHARE of the cache, BATCHES from it on; either way
at most about an unscoped search. Both are exact (FLAT): recall is the same. The share comes
from a count of the entries carrying the scope's attributes (one extra round trip, pipelined
with the cache's size), kept per cache and scope for SHARE_HINT_S: a scope's share changes
slowly, and a stale one only costs time, never a result. An HNSW index keeps RediSearch's own
choice (its batches are graph searches, not scans).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

ADHOC_SHARE = 0.10  # below this share of the cache, a scoped FLAT search walks the scope
SHARE_HINT_S = 60.0  # how long a scope's counted share is used before it is counted again
MAX_SHARE_HINTS = 10_000  # scopes remembered per store (the oldest forgotten first)


def policy_clause(share: float) -> str:
    """The KNN clause's attribute for a scope holding `share` of a FLAT index."""
    return " HYBRID_POLICY " + ("ADHOC_BF" if share < ADHOC_SHARE else "BATCHES")


ScopeKey = tuple[str, tuple[tuple[str, str], ...]]


class ScopeShares:
    """Each scope's share of its cache, as last counted (a hint: see the module docstring)."""

    def __init__(self) -> None:
        self._shares: dict[ScopeKey, tuple[float, float]] = {}  # -> (share, monotonic time)

    @staticmethod
    def key(cache_id: str, attributes: Mapping[str, str]) -> ScopeKey:
        return cache_id, tuple(sorted(attributes.items()))

    def get(self, key: ScopeKey) -> float | None:
        known = self._shares.get(key)
        if known is None or time.monotonic() - known[1] >= SHARE_HINT_S:
            return None
        return known[0]

    def put(self, key: ScopeKey, held: int, size: int) -> float:
        share = held / size if size > 0 else 0.0
        self._shares.pop(key, None)
        self._shares[key] = (share, time.monotonic())
        if len(self._shares) > MAX_SHARE_HINTS:
            self._shares.pop(next(iter(self._shares)))
        return share
