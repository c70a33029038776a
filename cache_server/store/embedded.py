"""The default store: SQLite (WAL) on disk for durability, vectors searched in memory.

One thread owns the SQLite connection and the per-cache vector indexes; every call runs there,
off the event loop, one at a time. At start, the indexes are rebuilt from the database, so an
acknowledged `put` survives `kill -9` (WAL: a committed transaction outlives the process; with
synchronous=FULL it also outlives a power cut); HNSW graphs come from snapshots where they can,
checked against the database (index_snapshot).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from cache_server.entries import CacheEntry, normalize_prompt, prompt_key
from cache_server.feedback import Feedback
from cache_server.store import embedded_evidence, embedded_feedback, embedded_marks
from cache_server.store.base import (
    CacheLimitError,
    FloatArray,
    ModelMismatchError,
    PurgeOutcome,
    PutOutcome,
    StoreConflictError,
)
from cache_server.store.index_snapshot import SAVE_SHARE, IndexSnapshots
from cache_server.store.scope_index import ScopeIndex
from cache_server.vector_index import VectorIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    cache_id    TEXT NOT NULL,
    id          TEXT NOT NULL,
    prompt      TEXT NOT NULL,
    prompt_key  TEXT NOT NULL,
    response    TEXT NOT NULL,
    attributes  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    last_access REAL NOT NULL,
    vector      BLOB NOT NULL,
    evidence    BLOB,  -- observations (embedded_evidence); added at open to older files
    PRIMARY KEY (cache_id, id)
);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (cache_id, last_access);
CREATE INDEX IF NOT EXISTS entries_exact ON entries (cache_id, prompt_key);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
-- The embedding model each cache's vectors came from (its identity: the ONNX file's sha256).
CREATE TABLE IF NOT EXISTS cache_models (
    cache_id TEXT PRIMARY KEY,
    model    TEXT NOT NULL
);
"""

_COLUMNS = "cache_id, id, prompt, response, attributes, created_at, expires_at"


def _entry(row: tuple[str, str, str, str, str, float, float | None]) -> CacheEntry:
    cache_id, entry_id, prompt, response, attributes, created_at, expires_at = row
    return CacheEntry(
        cache_id=cache_id,
        id=entry_id,
        prompt=prompt,
        response=response,
        attributes=json.loads(attributes),
        created_at=created_at,
        expires_at=expires_at,
    )


class _CacheState:
    """In-memory side of one cache: its vectors and, per entry, what filters need."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self.scopes = ScopeIndex()  # each entry's attributes, and the entries of each value
        self.expires_at: dict[str, float] = {}  # only entries with a TTL
        # Exact-match keys present, so that a miss costs no SQLite read.
        self.key_of: dict[str, str] = {}
        self.keys: collections.Counter[str] = collections.Counter()


class EmbeddedStore:
    backend = "embedded"

    def __init__(
        self,
        data_dir: Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        ann_threshold: int = 20_000,
        hnsw_m: int = 16,
        hnsw_ef_search: int = 128,
    ) -> None:
        self.path = data_dir / "semcache.sqlite3"
        self._synchronous = synchronous
        self._index_options = {
            "ann_threshold": ann_threshold,
            "hnsw_m": hnsw_m,
            "hnsw_ef_search": hnsw_ef_search,
        }
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-store")
        self._db: sqlite3.Connection | None = None
        self._caches: dict[str, _CacheState] = {}
        self._snapshots = IndexSnapshots(self.path)
        self._rejecting: set[str] = set()  # caches holding any "wrong" report
        # Counters live in this process (the embedded store has one cache server).
        self._counters: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.executescript(_SCHEMA)
        db.executescript(embedded_feedback.SCHEMA)
        db.executescript(embedded_marks.SCHEMA)
        embedded_evidence.migrate(db)
        self._db = db
        self._rejecting = embedded_feedback.caches_with_wrong_reports(db)
        self._models = dict(db.execute("SELECT cache_id, model FROM cache_models").fetchall())
        loaded: dict[str, tuple[list[str], list[FloatArray]]] = {}
        for cache_id, entry_id, attributes, expires_at, blob, key in db.execute(
            "SELECT cache_id, id, attributes, expires_at, vector, prompt_key FROM entries"
        ):
            ids, vectors = loaded.setdefault(cache_id, ([], []))
            ids.append(entry_id)
            vectors.append(np.frombuffer(blob, dtype="<f4"))
            state = self._state(cache_id, len(vectors[0]))
            state.scopes.put(entry_id, json.loads(attributes))
            state.key_of[entry_id] = key
            state.keys[key] += 1
            if expires_at is not None:
                state.expires_at[entry_id] = expires_at
        for cache_id, (ids, vectors) in loaded.items():
            self._snapshots.load(cache_id, self._caches[cache_id].index, ids, np.vstack(vectors))
        self._snapshots.remove_stale(self._indexes())
        log.info(
            "embedded store %s: %d entries in %d caches",
            self.path,
            sum(len(ids) for ids, _ in loaded.values()),
            len(loaded),
        )

    def _indexes(self) -> dict[str, VectorIndex]:
        return {cache_id: state.index for cache_id, state in self._caches.items()}

    def _state(self, cache_id: str, dimension: int) -> _CacheState:
        state = self._caches.get(cache_id)
        if state is None:
            state = self._caches[cache_id] = _CacheState(
                VectorIndex(dimension, **self._index_options)
            )
        return state

    def vector_dimension(self, cache_id: str) -> int | None:
        state = self._caches.get(cache_id)
        return state.index.dimension if state is not None else None

    async def ping(self) -> bool:
        return self._db is not None

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._snapshots.save(self._indexes())
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    def _remember(
        self,
        cache_id: str,
        entry_id: str,
        attributes: Mapping[str, str],
        expires_at: float | None,
        vector: FloatArray,
        key: str,
    ) -> None:
        state = self._state(cache_id, vector.shape[0])
        state.index.add(entry_id, vector)
        state.scopes.put(entry_id, attributes)
        old_key = state.key_of.get(entry_id)
        if old_key is not None:
            state.keys[old_key] -= 1
        state.key_of[entry_id] = key
        state.keys[key] += 1
        if expires_at is None:
            state.expires_at.pop(entry_id, None)
        else:
            state.expires_at[entry_id] = expires_at

    def _forget(self, cache_id: str, entry_ids: list[str]) -> None:
        state = self._caches.get(cache_id)
        if state is None:
            return
        for entry_id in entry_ids:
            state.index.remove(entry_id)
            state.scopes.discard(entry_id)
            state.expires_at.pop(entry_id, None)
            key = state.key_of.pop(entry_id, None)
            if key is not None:
                state.keys[key] -= 1
                if state.keys[key] <= 0:
                    del state.keys[key]

    # -- writes ---------------------------------------------------------------------------

    async def check_dimension(self, cache_id: str, dimension: int, model: str = "") -> None:
        # Read from the event loop: dict look-ups are atomic.
        self._check_dimension(cache_id, dimension, model)

    def _check_dimension(self, cache_id: str, dimension: int, model: str) -> None:
        state = self._caches.get(cache_id)
        if state is not None and state.index.dimension != dimension:
            raise StoreConflictError(
                f"cache {cache_id!r} holds {state.index.dimension}-dim vectors; got "
                f"{dimension} (the embedding model changed to one of another size: flush the "
                "cache)"
            )
        held = self._models.get(cache_id)
        if model and held is not None and held != model:
            raise ModelMismatchError(cache_id, held, model)

    async def vector_model(self, cache_id: str) -> str | None:
        return self._models.get(cache_id)

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
        with self.db:  # one transaction: the entry, the cache's model and any evictions
            self.db.execute("BEGIN IMMEDIATE")
            if record_model:
                self.db.execute(
                    "INSERT OR REPLACE INTO cache_models (cache_id, model) VALUES (?, ?)",
                    (entry.cache_id, model),
                )
            self.db.execute(
                f"INSERT OR REPLACE INTO entries ({_COLUMNS}, prompt_key, last_access, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.cache_id,
                    entry.id,
                    entry.prompt,
                    entry.response,
                    json.dumps(dict(entry.attributes), ensure_ascii=False),
                    entry.created_at,
                    entry.expires_at,
                    prompt_key(entry.prompt),
                    now,
                    vector.astype("<f4").tobytes(),
                ),
            )
            size = len(state.index) if state is not None else 0
            if state is None or entry.id not in state.index:
                size += 1
            excess = size - max_entries
            evicted: list[str] = []
            if excess > 0:
                evicted = [
                    row[0]
                    for row in self.db.execute(
                        "SELECT id FROM entries WHERE cache_id = ? AND id != ? "
                        "ORDER BY last_access ASC LIMIT ?",
                        (entry.cache_id, entry.id, excess),
                    )
                ]
                self.db.executemany(
                    "DELETE FROM entries WHERE cache_id = ? AND id = ?",
                    [(entry.cache_id, e) for e in evicted],
                )
            self.db.execute("COMMIT")
        # Memory follows the database only once the transaction is durable.
        if record_model:
            self._models[entry.cache_id] = model
        self._remember(
            entry.cache_id,
            entry.id,
            entry.attributes,
            entry.expires_at,
            vector,
            prompt_key(entry.prompt),
        )
        self._forget(entry.cache_id, evicted)
        if evicted:
            self._counters[entry.cache_id]["evictions"] += len(evicted)
        return PutOutcome(evicted=len(evicted))

    async def touch(self, cache_id: str, entry_id: str, now: float) -> None:
        await self._run(self._touch, cache_id, entry_id, now)

    def _touch(self, cache_id: str, entry_id: str, now: float) -> None:
        self.db.execute(
            "UPDATE entries SET last_access = ? WHERE cache_id = ? AND id = ?",
            (now, cache_id, entry_id),
        )

    async def delete(self, cache_id: str, entry_id: str) -> bool:
        return await self._run(self._delete_ids, cache_id, [entry_id]) > 0

    def _delete_ids(self, cache_id: str, entry_ids: list[str]) -> int:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            deleted = sum(
                self.db.execute(
                    "DELETE FROM entries WHERE cache_id = ? AND id = ?", (cache_id, e)
                ).rowcount
                for e in entry_ids
            )
            self.db.execute("COMMIT")
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
        with self.db:  # one transaction: the entries, the feedback and the pool
            self.db.execute("BEGIN IMMEDIATE")
            deleted = self.db.execute(
                "DELETE FROM entries WHERE cache_id = ?", (cache_id,)
            ).rowcount
            embedded_feedback.remove_cache(self.db, cache_id)
            embedded_evidence.remove_pool(self.db, cache_id)
            embedded_marks.remove_cache(self.db, cache_id)
            self.db.execute("DELETE FROM cache_models WHERE cache_id = ?", (cache_id,))
            self.db.execute("COMMIT")
        self._caches.pop(cache_id, None)
        self._models.pop(cache_id, None)
        self._rejecting.discard(cache_id)
        return int(deleted)

    async def purge_expired(self, now: float) -> PurgeOutcome:
        return await self._run(self._purge_expired, now)

    def _purge_expired(self, now: float) -> PurgeOutcome:
        rows = self.db.execute(
            "SELECT cache_id, id FROM entries WHERE expires_at IS NOT NULL AND expires_at <= ?",
            (now,),
        ).fetchall()
        by_cache: dict[str, list[str]] = {}
        for cache_id, entry_id in rows:
            by_cache.setdefault(cache_id, []).append(entry_id)
        expired = {cache_id: self._delete_ids(cache_id, ids) for cache_id, ids in by_cache.items()}
        for cache_id, count in expired.items():
            self._counters[cache_id]["expirations"] += count
        # The store's periodic chores.
        self._snapshots.save(self._indexes(), share=SAVE_SHARE)
        embedded_marks.trim(self.db)
        return PurgeOutcome(expired=expired)

    # -- counters (in memory: one process owns this store) ----------------------------------

    async def admits(self, cache_id: str, max_caches: int) -> bool:
        return cache_id in self._caches or len(self._caches) < max_caches

    async def add_counters(self, cache_id: str, counts: Mapping[str, int]) -> None:
        if cache_id in self._caches:
            self._counters[cache_id].update(counts)

    async def counters(self, cache_id: str) -> dict[str, int]:
        return dict(self._counters.get(cache_id, {}))

    async def reset_counters(self, cache_id: str) -> None:
        self._counters.pop(cache_id, None)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, cache_id: str, entry_id: str, now: float) -> CacheEntry | None:
        return await self._run(self._get, cache_id, entry_id, now)

    def _get(self, cache_id: str, entry_id: str, now: float) -> CacheEntry | None:
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE cache_id = ? AND id = ?", (cache_id, entry_id)
        ).fetchone()
        if row is None:
            return None
        entry = _entry(row)
        return None if entry.expired(now) else entry

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
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE cache_id = ? AND prompt_key = ? "
            "ORDER BY created_at DESC",
            (cache_id, prompt_key(prompt)),
        ).fetchall()
        wanted = normalize_prompt(prompt)
        for row in rows:
            entry = _entry(row)
            if (
                normalize_prompt(entry.prompt) == wanted
                and entry.matches(attributes)
                and not entry.expired(now)
            ):
                return entry
        return None

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
        if state is None or state.index.dimension != vector.shape[0]:
            return []

        in_scope, excluded = state.scopes.found_by(attributes)
        if in_scope is not None and not in_scope:
            return []
        expiring = state.expires_at
        total = max(len(state.scopes), 1)
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
        found = state.index.search(
            vector,
            k,
            min_similarity,
            live_and_in_scope if needs_filter else None,
            selectivity=selectivity,
        )
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
        if state is None:
            return 0
        expired = sum(1 for e in state.expires_at.values() if e <= now)
        return len(state.index) - expired

    # -- feedback (cache_server.feedback) -------------------------------------------------

    async def add_feedback(self, report: Feedback) -> None:
        await self._run(self._add_feedback, report)

    def _add_feedback(self, report: Feedback) -> None:
        embedded_feedback.add(self.db, report)
        if not report.correct:
            self._rejecting.add(report.cache_id)

    async def excluded(self, cache_id: str, prompt_key: str) -> dict[str, float]:
        if cache_id not in self._rejecting:
            return {}
        return await self._run(embedded_feedback.excluded, self.db, cache_id, prompt_key)

    async def list_feedback(self, cache_id: str | None = None) -> list[Feedback]:
        return await self._run(embedded_feedback.listing, self.db, cache_id)

    # -- re-embedding (cache_server.reindex) ------------------------------------------------

    async def cache_ids(self) -> list[str]:
        return sorted(self._caches)

    async def entry_ids(self, cache_id: str) -> list[str]:
        state = self._caches.get(cache_id)
        return sorted(state.key_of) if state is not None else []

    async def replace_vectors(self, cache_id: str, vectors: Mapping[str, FloatArray]) -> int:
        return await self._run(self._replace_vectors, cache_id, dict(vectors))

    def _replace_vectors(self, cache_id: str, vectors: dict[str, FloatArray]) -> int:
        state = self._caches.get(cache_id)
        if state is None:
            return 0
        rows = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in vectors.items()}
        for vector in rows.values():
            self._check_dimension(cache_id, vector.shape[0], "")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            replaced = [
                entry_id
                for entry_id, vector in rows.items()
                if self.db.execute(
                    "UPDATE entries SET vector = ? WHERE cache_id = ? AND id = ?",
                    (vector.astype("<f4").tobytes(), cache_id, entry_id),
                ).rowcount
            ]
            self.db.execute("COMMIT")
        for entry_id in replaced:
            state.index.add(entry_id, rows[entry_id])
        return len(replaced)

    async def set_vector_model(self, cache_id: str, model: str) -> None:
        await self._run(self._set_vector_model, cache_id, model)

    def _set_vector_model(self, cache_id: str, model: str) -> None:
        if cache_id not in self._caches:
            return
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO cache_models (cache_id, model) VALUES (?, ?)",
                (cache_id, model),
            )
        self._models[cache_id] = model

    async def mark(self, cache_id: str, marks: Sequence[str], now: float) -> list[bool]:
        if cache_id not in self._caches:
            return [False] * len(marks)
        return await self._run(embedded_marks.add, self.db, cache_id, list(marks), now)

    async def marked(self, cache_id: str, mark: str) -> bool:
        return await self._run(embedded_marks.has, self.db, cache_id, mark)

    # -- the verified hit policy (embedded_evidence) ----------------------------------------

    async def evidence(self, cache_id: str, entry_id: str) -> bytes:
        return await self._run(embedded_evidence.of_entry, self.db, cache_id, entry_id)

    async def observe(
        self, cache_id: str, entry_id: str, entry_created_at: float, record: bytes
    ) -> bool:
        embedded_evidence.check_record(record)
        return await self._run(self._observe, cache_id, entry_id, entry_created_at, record)

    def _observe(self, cache_id: str, entry_id: str, created_at: float, record: bytes) -> bool:
        # On the store's thread, where `_caches` changes: "held" as `admits` judges it.
        held = cache_id in self._caches
        return embedded_evidence.observe(self.db, cache_id, entry_id, created_at, record, held)

    async def inherit_evidence(
        self, cache_id: str, entry_id: str, entry_created_at: float, blob: bytes
    ) -> bool:
        return await self._run(
            embedded_evidence.inherit, self.db, cache_id, entry_id, entry_created_at, blob
        )

    async def pooled_evidence(self, cache_id: str) -> bytes:
        return await self._run(embedded_evidence.pooled, self.db, cache_id)

    async def sample_evidence(self, cache_id: str, limit: int) -> list[bytes]:
        return await self._run(embedded_evidence.sample, self.db, cache_id, limit)

    async def cache_policy(self, cache_id: str) -> str | None:
        return await self._run(embedded_evidence.policy, self.db, cache_id)

    async def policy_count(self) -> int:
        return await self._run(embedded_evidence.policy_count, self.db)

    async def set_cache_policy(self, cache_id: str, policy: str | None) -> None:
        await self._run(embedded_evidence.set_policy, self.db, cache_id, policy)
