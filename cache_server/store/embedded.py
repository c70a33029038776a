"""The default store: SQLite (WAL) on disk for durability, vectors searched in memory.

One thread owns the SQLite connection and the per-cache vector indexes; every call runs there,
off the event loop, one at a time. At start, the indexes are rebuilt from the database, so an
acknowledged `put` survives `kill -9` (WAL: a committed transaction outlives the process; with
synchronous=FULL it also outlives a power cut); HNSW graphs come from snapshots where they can,
checked against the database (index_snapshot).

This module holds EmbeddedStore's writes, counters, reads and re-embedding; it builds on
embedded_connection (the thread, the connection, open and close, each cache's dimension and
model) and embedded_learning (feedback, marks, the verified policy's data). The SQL is in
embedded_rows and its sibling table modules, each cache's memory in embedded_memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cache_server.entries import CacheEntry, prompt_key
from cache_server.store import embedded_marks, embedded_rows
from cache_server.store.base import (
    CacheLimitError,
    FloatArray,
    PurgeOutcome,
    PutOutcome,
)
from cache_server.store.embedded_learning import EmbeddedLearning
from cache_server.store.index_snapshot import SAVE_SHARE


class EmbeddedStore(EmbeddedLearning):
    backend = "embedded"

    def _forget(self, cache_id: str, entry_ids: list[str]) -> None:
        state = self._caches.get(cache_id)
        if state is not None:
            state.forget(entry_ids)

    # -- writes ---------------------------------------------------------------------------

    async def put(
        self,
        entry: CacheEntry,
        vector: FloatArray,
        max_entries: int,
        now: float,
        *,
        max_caches: int,
        model: str = "",
    ) -> PutOutcome:
        return await self._run(self._put, entry, vector, max_entries, now, max_caches, model)

    def _put(
        self,
        entry: CacheEntry,
        vector: FloatArray,
        max_entries: int,
        now: float,
        max_caches: int,
        model: str,
    ) -> PutOutcome:
        # Runs on the store's one thread: the checks and the write are one step.
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        state = self._caches.get(entry.cache_id)
        if state is None and len(self._caches) >= max_caches:
            raise CacheLimitError(
                f"cache {entry.cache_id!r} would be one cache too many: this deployment holds "
                f"at most {max_caches} caches (max_caches); flush caches no longer used, or "
                "raise the limit"
            )
        self._check_dimension(entry.cache_id, vector.shape[0], model)
        record_model = bool(model) and entry.cache_id not in self._models
        size = len(state.index) if state is not None else 0
        if state is None or entry.id not in state.index:
            size += 1
        # One transaction: the entry, the cache's model and any evictions.
        evicted = embedded_rows.put(
            self.db, entry, vector, now, model if record_model else None, size - max_entries
        )
        # Memory follows the database only once the transaction is durable.
        if record_model:
            self._models[entry.cache_id] = model
        self._state(entry.cache_id, vector.shape[0]).remember(
            entry.id, entry.attributes, entry.expires_at, vector, prompt_key(entry.prompt)
        )
        self._forget(entry.cache_id, evicted)
        if evicted:
            self.counts.add(entry.cache_id, {"evictions": len(evicted)})
        return PutOutcome(evicted=len(evicted))

    async def touch(self, cache_id: str, entry_id: str, now: float) -> None:
        await self._run(self._touch, cache_id, entry_id, now)

    def _touch(self, cache_id: str, entry_id: str, now: float) -> None:
        embedded_rows.touch(self.db, cache_id, entry_id, now)

    async def delete(self, cache_id: str, entry_id: str) -> bool:
        return await self._run(self._delete_ids, cache_id, [entry_id]) > 0

    def _delete_ids(self, cache_id: str, entry_ids: list[str]) -> int:
        deleted = embedded_rows.delete(self.db, cache_id, entry_ids)
        self._forget(cache_id, entry_ids)
        return deleted

    async def delete_matching(self, cache_id: str, attributes: Mapping[str, str]) -> int:
        return await self._run(self._delete_matching, cache_id, dict(attributes))

    def _delete_matching(self, cache_id: str, attributes: dict[str, str]) -> int:
        state = self._caches.get(cache_id)
        if state is None:
            return 0
        doomed = list(state.scopes.members(attributes))
        return self._delete_ids(cache_id, doomed)

    async def flush(self, cache_id: str) -> int:
        return await self._run(self._flush, cache_id)

    def _flush(self, cache_id: str) -> int:
        deleted = embedded_rows.flush(self.db, cache_id)
        self._caches.pop(cache_id, None)
        self._models.pop(cache_id, None)
        self._rejecting.discard(cache_id)
        return deleted

    async def purge_expired(self, now: float) -> PurgeOutcome:
        return await self._run(self._purge_expired, now)

    def _purge_expired(self, now: float) -> PurgeOutcome:
        by_cache = embedded_rows.expired(self.db, now)
        expired = {cache_id: self._delete_ids(cache_id, ids) for cache_id, ids in by_cache.items()}
        for cache_id, count in expired.items():
            self.counts.add(cache_id, {"expirations": count})
        # The store's periodic chores.
        self.counts.save(self.db)
        self._snapshots.save(self._indexes(), share=SAVE_SHARE)
        embedded_marks.trim(self.db)
        return PurgeOutcome(expired=expired)

    # -- counters (counted in memory: one process owns this store; saved by the chores) ----

    async def admits(self, cache_id: str, max_caches: int) -> bool:
        return cache_id in self._caches or len(self._caches) < max_caches

    async def add_counters(self, cache_id: str, counts: Mapping[str, int]) -> bool:
        if cache_id not in self._caches:
            return False
        self.counts.add(cache_id, counts)
        return True

    async def counters(self, cache_id: str) -> dict[str, int]:
        return self.counts.of(cache_id)

    async def reset_counters(self, cache_id: str) -> None:
        self.counts.reset(cache_id)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, cache_id: str, entry_id: str, now: float) -> CacheEntry | None:
        return await self._run(self._get, cache_id, entry_id, now)

    def _get(self, cache_id: str, entry_id: str, now: float) -> CacheEntry | None:
        return embedded_rows.get(self.db, cache_id, entry_id, now)

    async def find_exact(
        self, cache_id: str, prompt: str, attributes: Mapping[str, str], now: float
    ) -> CacheEntry | None:
        state = self._caches.get(cache_id)
        # Read from the event loop: a dict membership test is atomic, and a racing write can
        # only make this miss an entry stored at this very moment.
        if state is None or prompt_key(prompt) not in state.keys:
            return None
        return await self._run(self._find_exact, cache_id, prompt, dict(attributes), now)

    def _find_exact(
        self, cache_id: str, prompt: str, attributes: dict[str, str], now: float
    ) -> CacheEntry | None:
        return embedded_rows.find_exact(self.db, cache_id, prompt, attributes, now)

    async def search(
        self,
        cache_id: str,
        vector: FloatArray,
        k: int,
        min_similarity: float,
        attributes: Mapping[str, str],
        now: float,
    ) -> list[tuple[CacheEntry, float]]:
        return await self._run(
            self._search, cache_id, vector, k, min_similarity, dict(attributes), now
        )

    def _search(
        self,
        cache_id: str,
        vector: FloatArray,
        k: int,
        min_similarity: float,
        attributes: dict[str, str],
        now: float,
    ) -> list[tuple[CacheEntry, float]]:
        state = self._caches.get(cache_id)
        if state is None:
            return []
        found = state.search(vector, k, min_similarity, attributes, now)
        out: list[tuple[CacheEntry, float]] = []
        for entry_id, similarity in found:
            entry = self._get(cache_id, entry_id, now)
            if entry is not None:
                out.append((entry, similarity))
        return out

    async def count(self, cache_id: str, now: float) -> int:
        return await self._run(self._count, cache_id, now)

    def _count(self, cache_id: str, now: float) -> int:
        state = self._caches.get(cache_id)
        return state.count(now) if state is not None else 0

    # -- re-embedding (cache_server.reindex) ------------------------------------------------

    async def cache_ids(self) -> list[str]:
        return sorted(self._caches)

    async def entry_ids(self, cache_id: str) -> list[str]:
        state = self._caches.get(cache_id)
        return sorted(state.key_of) if state is not None else []

    async def entries_with_vectors(
        self, cache_id: str, entry_ids: Sequence[str], now: float
    ) -> list[tuple[CacheEntry, FloatArray]]:
        return await self._run(self._entries_with_vectors, cache_id, list(entry_ids), now)

    def _entries_with_vectors(
        self, cache_id: str, entry_ids: list[str], now: float
    ) -> list[tuple[CacheEntry, FloatArray]]:
        # From SQLite, the truth, rather than from the index in memory.
        return embedded_rows.with_vectors(self.db, cache_id, entry_ids, now)

    async def replace_vectors(self, cache_id: str, vectors: Mapping[str, FloatArray]) -> int:
        return await self._run(self._replace_vectors, cache_id, dict(vectors))

    def _replace_vectors(self, cache_id: str, vectors: dict[str, FloatArray]) -> int:
        state = self._caches.get(cache_id)
        if state is None:
            return 0
        rows = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in vectors.items()}
        for vector in rows.values():
            self._check_dimension(cache_id, vector.shape[0], "")
        replaced = embedded_rows.replace_vectors(self.db, cache_id, rows)
        for entry_id in replaced:
            state.index.add(entry_id, rows[entry_id])
        return len(replaced)

    async def set_vector_model(self, cache_id: str, model: str) -> None:
        await self._run(self._set_vector_model, cache_id, model)

    def _set_vector_model(self, cache_id: str, model: str) -> None:
        if cache_id not in self._caches:
            return
        embedded_rows.set_model(self.db, cache_id, model)
        self._models[cache_id] = model
