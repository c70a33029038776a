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
from cache_server.vector_load import IndexLoader, loader_for


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
            candidates=in_scope,
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
    of its vectors) from the database's entries, in one pass over them; per cache, how many
    there are. Each vector goes straight to where it lives (cache_server/vector_load.py), so
    that memory at the peak of a start is about what it is once open."""
    counts: dict[str, int] = dict(
        db.execute("SELECT cache_id, count(*) FROM entries GROUP BY cache_id").fetchall()
    )
    states: dict[str, CacheState] = {}
    loaders: dict[str, IndexLoader] = {}
    for cache_id, entry_id, attributes, expires_at, blob, key in db.execute(
        "SELECT cache_id, id, attributes, expires_at, vector, prompt_key FROM entries"
    ):
        vector = np.frombuffer(blob, dtype="<f4")
        loader = loaders.get(cache_id)
        if loader is None:
            state = states[cache_id] = state_for(cache_id, len(vector))
            loader = loaders[cache_id] = snapshots.loader(cache_id, state.index, counts[cache_id])
        else:
            state = states[cache_id]
        state.scopes.put(entry_id, json.loads(attributes))
        state.key_of[entry_id] = key
        state.keys[key] += 1
        if expires_at is not None:
            state.expires_at[entry_id] = expires_at
        loader.add(entry_id, vector)
    for cache_id, loader in loaders.items():
        if not loader.finish():
            _refill(db, cache_id, states[cache_id].index, counts[cache_id])
    return {cache_id: counts[cache_id] for cache_id in loaders}


def _refill(db: sqlite3.Connection, cache_id: str, index: VectorIndex, count: int) -> None:
    """Fills the empty index of `cache_id` from its rows again (its snapshot did not fit)."""
    loader = loader_for(index, count)
    for entry_id, blob in db.execute(
        "SELECT id, vector FROM entries WHERE cache_id = ?", (cache_id,)
    ):
        loader.add(entry_id, np.frombuffer(blob, dtype="<f4"))
    loader.finish()
