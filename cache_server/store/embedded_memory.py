"""The embedded store's memory: per cache, its vectors (a VectorIndex) and what filters need
(each entry's scope, expiry and exact-match key), so that a search reads SQLite only for the
entries it found.

EmbeddedStore brings a cache's state in step once a write is durable (`remember`, `forget`);
at open, `load` rebuilds every cache's state from the database, adopting HNSW graphs from
their snapshots where they still match (index_snapshot). Not thread-safe: the store's one
thread owns it.
"""

from __future__ import annotations

import collections
import json
import sqlite3
from collections.abc import Callable, Mapping

import numpy as np

from cache_server.store.base import FloatArray
from cache_server.store.index_snapshot import IndexSnapshots
from cache_server.store.scope_index import ScopeIndex
from cache_server.vector_index import VectorIndex


class CacheState:
    """In-memory side of one cache: its vectors and, per entry, what filters need."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self.scopes = ScopeIndex()  # each entry's attributes, and the entries of each value
        self.expires_at: dict[str, float] = {}  # only entries with a TTL
        # Exact-match keys present, so that a miss costs no SQLite read.
        self.key_of: dict[str, str] = {}
        self.keys: collections.Counter[str] = collections.Counter()

    def remember(
        self,
        entry_id: str,
        attributes: Mapping[str, str],
        expires_at: float | None,
        vector: FloatArray,
        key: str,
    ) -> None:
        """Adds the entry, or replaces what was known of it."""
        self.index.add(entry_id, vector)
        self.scopes.put(entry_id, attributes)
        old_key = self.key_of.get(entry_id)
        if old_key is not None:
            self.keys[old_key] -= 1
        self.key_of[entry_id] = key
        self.keys[key] += 1
        if expires_at is None:
            self.expires_at.pop(entry_id, None)
        else:
            self.expires_at[entry_id] = expires_at

    def forget(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            self.index.remove(entry_id)
            self.scopes.discard(entry_id)
            self.expires_at.pop(entry_id, None)
            key = self.key_of.pop(entry_id, None)
            if key is not None:
                self.keys[key] -= 1
                if self.keys[key] <= 0:
                    del self.keys[key]

    def search(
        self,
        vector: FloatArray,
        k: int,
        min_similarity: float,
        attributes: Mapping[str, str],
        now: float,
    ) -> list[tuple[str, float]]:
        """The ids of up to k live entries in scope nearest `vector`, at or above
        `min_similarity`, with their similarity, best first."""
        if self.index.dimension != vector.shape[0]:
            return []
        in_scope, excluded = self.scopes.found_by(attributes)
        if in_scope is not None and not in_scope:
            return []
        expiring = self.expires_at
        total = max(len(self.scopes), 1)
        if in_scope is not None:
            selectivity = len(in_scope) / total
        else:
            selectivity = (total - len(excluded)) / total
            if selectivity <= 0:
                return []

        def live_and_in_scope(entry_id: str) -> bool:
            expires_at = expiring.get(entry_id)
            if expires_at is not None and expires_at <= now:
                return False
            if in_scope is None:
                return entry_id not in excluded
            return entry_id in in_scope

        needs_filter = in_scope is not None or bool(excluded) or bool(expiring)
        return self.index.search(
            vector,
            k,
            min_similarity,
            live_and_in_scope if needs_filter else None,
            selectivity=selectivity,
        )

    def count(self, now: float) -> int:
        """How many live entries the cache holds."""
        expired = sum(1 for e in self.expires_at.values() if e <= now)
        return len(self.index) - expired


def load(
    db: sqlite3.Connection,
    state_for: Callable[[str, int], CacheState],
    snapshots: IndexSnapshots,
) -> dict[str, int]:
    """Rebuilds each cache's state (made by `state_for`, given the cache id and the dimension
    of its vectors) from the database's entries; per cache, how many there are."""
    loaded: dict[str, tuple[list[str], list[FloatArray]]] = {}
    states: dict[str, CacheState] = {}
    for cache_id, entry_id, attributes, expires_at, blob, key in db.execute(
        "SELECT cache_id, id, attributes, expires_at, vector, prompt_key FROM entries"
    ):
        ids, vectors = loaded.setdefault(cache_id, ([], []))
        ids.append(entry_id)
        vectors.append(np.frombuffer(blob, dtype="<f4"))
        state = states[cache_id] = state_for(cache_id, len(vectors[0]))
        state.scopes.put(entry_id, json.loads(attributes))
        state.key_of[entry_id] = key
        state.keys[key] += 1
        if expires_at is not None:
            state.expires_at[entry_id] = expires_at
    for cache_id, (ids, vectors) in loaded.items():
        snapshots.load(cache_id, states[cache_id].index, ids, np.vstack(vectors))
    return {cache_id: len(ids) for cache_id, (ids, _) in loaded.items()}
