"""The ground EmbeddedStore stands on: one thread that owns the SQLite connection and each
cache's memory (embedded_memory: its vector index, scopes, expiries, exact-match keys), every
call run there, off the event loop, one at a time; opening (the memory rebuilt from the
database, HNSW graphs adopted from snapshots where they match) and closing (graphs
snapshotted); and the dimension and embedding model each cache's vectors have. The store's
other parts build on this class: embedded_learning, then embedded (EmbeddedStore)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from cache_server.store import embedded_feedback, embedded_rows
from cache_server.store.base import ModelMismatchError, StoreConflictError, StoreUnavailableError
from cache_server.store.embedded_counters import StoreCounters
from cache_server.store.embedded_memory import CacheState, load
from cache_server.store.index_snapshot import IndexSnapshots
from cache_server.vector_index import VectorIndex

log = logging.getLogger(__name__)
T = TypeVar("T")


class EmbeddedConnection:
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
        self._opened_models: dict[str, str] | None = None  # read by open()
        self._caches: dict[str, CacheState] = {}
        self._snapshots = IndexSnapshots(self.path)
        self._rejecting: set[str] = set()  # caches holding any "wrong" report
        # Counted in this process (the embedded store has one cache server), saved to the file.
        self.counts = StoreCounters()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        db = embedded_rows.connect(self.path, self._synchronous)
        self._db = db
        self._rejecting = embedded_feedback.caches_with_wrong_reports(db)
        self._models = embedded_rows.models(db)
        self.counts.load(db)
        loaded = load(db, self._state, self._snapshots)
        self._snapshots.remove_stale(self._indexes())
        log.info(
            "embedded store %s: %d entries in %d caches",
            self.path,
            sum(loaded.values()),
            len(loaded),
        )

    def _indexes(self) -> dict[str, VectorIndex]:
        return {cache_id: state.index for cache_id, state in self._caches.items()}

    def _state(self, cache_id: str, dimension: int) -> CacheState:
        state = self._caches.get(cache_id)
        if state is None:
            state = self._caches[cache_id] = CacheState(
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
            self.counts.save(self._db)
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:  # a call that arrives while the server starts (or stops)
            raise StoreUnavailableError("the embedded store is not open yet")
        return self._db

    @property
    def _models(self) -> dict[str, str]:
        """The embedding model of each cache's vectors, as open() read them."""
        if self._opened_models is None:
            raise StoreUnavailableError("the embedded store is not open yet")
        return self._opened_models

    @_models.setter
    def _models(self, models: dict[str, str]) -> None:
        self._opened_models = models

    # -- the dimension and model of each cache's vectors ------------------------------------

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
