"""The storage interface every backend implements (embedded SQLite, Redis)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cache_server.entries import CacheEntry
from cache_server.feedback import Feedback

FloatArray = npt.NDArray[np.float32]


class StoreUnavailableError(RuntimeError):
    """The store cannot be reached right now (e.g. Redis down); retry later."""


class StoreFullError(RuntimeError):
    """The store has no room left for new data (e.g. Redis at its maxmemory); freeing space
    (flushing caches) or raising the limit is needed, retrying alone does not help."""


class CacheLimitError(RuntimeError):
    """A write would open one cache more than the deployment may hold (max_caches)."""


class StoreConflictError(RuntimeError):
    """The request conflicts with what the store holds (e.g. vectors of another dimension
    after the embedding model changed)."""


class ModelMismatchError(StoreConflictError):
    """The cache holds vectors of another embedding model than the one served now: comparing
    them with this model's queries would be meaningless, so the cache refuses."""

    def __init__(self, cache_id: str, held: str, served: str) -> None:
        super().__init__(
            f"cache {cache_id!r} holds vectors of embedding model {held[:16]}, the embedder "
            f"serves {served[:16]}: re-embed its prompts with `make reindex CACHE={cache_id}` "
            "(resumable), or flush it"
        )
        self.cache_id = cache_id
        self.held = held
        self.served = served


@dataclass(frozen=True)
class PutOutcome:
    evicted: int = 0  # entries removed to stay within the cache's size cap


@dataclass(frozen=True)
class PurgeOutcome:
    expired: Mapping[str, int] = field(default_factory=dict)  # cache_id -> entries removed


class CacheStore(Protocol):
    """Entries with their vectors, per cache. Similarities are cosine (vectors unit-length).

    Every method is a coroutine; a backend keeps blocking work (SQLite, numpy, network) off the
    event loop. `now` is Unix seconds, passed in so tests control time.
    """

    backend: str

    async def open(self) -> None: ...

    async def ping(self) -> bool:
        """True when the store answers right now."""
        ...

    async def close(self) -> None: ...

    def vector_dimension(self, cache_id: str) -> int | None:
        """The dimension of the vectors `cache_id` holds, where this process knows it without
        asking the backend (None otherwise)."""
        ...

    async def admits(self, cache_id: str, max_caches: int) -> bool:
        """True when `cache_id` is a cache the store holds (from its first entry until it is
        flushed), or when fewer than `max_caches` caches are held, so it may become one. An
        early check (before paying for an answer): `put` enforces the limit itself."""
        ...

    async def check_dimension(self, cache_id: str, dimension: int, model: str = "") -> None:
        """Raises StoreConflictError when the cache holds vectors of another dimension, and
        ModelMismatchError when it holds vectors of another model (`model`, the identity of
        the embedding model, "" for not known), as `put` would: an early check, before paying
        for an answer that could not be stored."""
        ...

    async def vector_model(self, cache_id: str) -> str | None:
        """The identity of the embedding model the cache's vectors came from (recorded by its
        first `put` that named one; None: not recorded, or no such cache). On a shared store
        the answer may lag another replica's flush by a few seconds."""
        ...

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
        """Stores (or replaces) the entry, then evicts least-recently-used entries of its
        cache beyond `max_entries`, never the entry itself. Durable when it returns.

        Atomic with the check of its cache: raises CacheLimitError, storing nothing, when the
        entry would open one cache more than `max_caches`, StoreConflictError when the cache
        holds vectors of another dimension, and ModelMismatchError when it holds vectors of
        another model than `model` (the first put naming a model records it)."""
        ...

    async def get(self, cache_id: str, entry_id: str, now: float) -> CacheEntry | None: ...

    async def find_exact(
        self, cache_id: str, prompt: str, attributes: Mapping[str, str], now: float
    ) -> CacheEntry | None:
        """The newest live entry whose normalised prompt equals `prompt` and which carries all
        `attributes`."""
        ...

    async def search(
        self,
        cache_id: str,
        vector: FloatArray,
        k: int,
        min_similarity: float,
        attributes: Mapping[str, str],
        now: float,
    ) -> list[tuple[CacheEntry, float]]:
        """Up to k live entries with similarity >= min_similarity that carry all `attributes`,
        best first."""
        ...

    async def touch(self, cache_id: str, entry_id: str, now: float) -> None:
        """Marks the entry as just used (least-recently-used eviction)."""
        ...

    async def delete(self, cache_id: str, entry_id: str) -> bool: ...

    async def delete_matching(self, cache_id: str, attributes: Mapping[str, str]) -> int: ...

    async def flush(self, cache_id: str) -> int:
        """Removes every entry of the cache and the cache itself (its dimension, its place
        among `max_caches`); its counters stay until `reset_counters`."""
        ...

    async def count(self, cache_id: str, now: float) -> int: ...

    async def purge_expired(self, now: float) -> PurgeOutcome:
        """Removes expired entries (counted in the `expirations` counter of their cache)."""
        ...

    async def add_counters(self, cache_id: str, counts: Mapping[str, int]) -> bool:
        """Adds to the cache's counters (hits, misses...). `put` counts `evictions` itself.
        Only for a cache the store holds: a look-up under an unknown cache id leaves nothing
        behind (else any caller could grow the store with made-up ids). True when counted,
        False when the store does not hold the cache."""
        ...

    async def counters(self, cache_id: str) -> dict[str, int]: ...

    async def reset_counters(self, cache_id: str) -> None: ...

    async def add_feedback(self, report: Feedback) -> None:
        """Keeps the report (durable when it returns; at most MAX_FEEDBACK_PER_CACHE per
        cache, the oldest dropped, and the exclusions they made with them) until the cache is
        flushed."""
        ...

    async def excluded(self, cache_id: str, prompt_key: str) -> dict[str, float]:
        """Entry id -> created_at of the answer reported wrong for this prompt key (by its
        latest report): feedback.exclusions over the cache's reports for it."""
        ...

    async def list_feedback(self, cache_id: str | None = None) -> list[Feedback]:
        """Every report kept (of one cache, or of all), oldest first."""
        ...

    # -- re-embedding and moving caches (cache_server.reindex, cache_server.transfer) --------

    async def cache_ids(self) -> list[str]:
        """Every cache the store holds, sorted."""
        ...

    async def entry_ids(self, cache_id: str) -> list[str]:
        """The ids of every entry the cache holds (expired ones too, until purged), sorted."""
        ...

    async def entries_with_vectors(
        self, cache_id: str, entry_ids: Sequence[str], now: float
    ) -> list[tuple[CacheEntry, FloatArray]]:
        """The live entries among `entry_ids` (at most a few thousand), each with its vector
        as stored, in the order asked; ids gone or expired are left out. For an export."""
        ...

    async def replace_vectors(self, cache_id: str, vectors: Mapping[str, FloatArray]) -> int:
        """Gives entries new vectors of the cache's dimension (else StoreConflictError),
        nothing else changed; an entry gone meanwhile is skipped (never re-created). The
        number replaced."""
        ...

    async def set_vector_model(self, cache_id: str, model: str) -> None:
        """Records `model` as what the cache's vectors came from (while the cache is held)."""
        ...

    async def mark(self, cache_id: str, marks: Sequence[str], now: float) -> list[bool]:
        """Adds each mark to the cache's set (at most feedback.MAX_MARKS_PER_CACHE, the oldest
        dropped): for each, True when it was not there yet. Only while the store holds the
        cache (else nothing is kept, and all are False); a flush removes them. Atomic per mark
        (replicas on Redis adding the same mark at once: one gets True)."""
        ...

    async def marked(self, cache_id: str, mark: str) -> bool:
        """Whether the cache's set holds `mark`."""
        ...

    async def unmark(self, cache_id: str, marks: Sequence[str]) -> None:
        """Removes the marks from the cache's set (those absent: nothing)."""
        ...

    # -- the verified hit policy (cache_server.learned_thresholds) -----------------------

    async def evidence(self, cache_id: str, entry_id: str) -> bytes:
        """The entry's observations (cache_server.learned_thresholds.evidence records, oldest
        first); b"" for an entry without any, or no such entry."""
        ...

    async def observe(
        self, cache_id: str, entry_id: str, entry_created_at: float, record: bytes
    ) -> bool:
        """Adds one observation: to the entry's evidence (at most evidence.MAX_PER_ENTRY, the
        oldest dropped) when the entry is still the one judged (its created_at equals
        `entry_created_at`: an answer stored again starts with no evidence), and to the
        cache's pool (at most evidence.MAX_PER_CACHE) in any case, while the store holds the
        cache. Atomic (replicas on Redis add concurrently without losing one). True when the
        entry took it. An entry's evidence goes with the entry (deleted, evicted, expired,
        replaced); the pool goes with a flush."""
        ...

    async def inherit_evidence(
        self, cache_id: str, entry_id: str, entry_created_at: float, blob: bytes
    ) -> bool:
        """Sets the entry's evidence to `blob` (its last evidence.MAX_PER_ENTRY records), when
        the entry is still the one stored at `entry_created_at`; the pool is not touched. For
        an entry stored with an answer judged the same as a near entry's: it starts with what
        that entry learned. True when the entry took it."""
        ...

    async def pooled_evidence(self, cache_id: str) -> bytes:
        """The cache's pooled observations, oldest first (b"" when none)."""
        ...

    async def forget_learning(self, cache_id: str) -> None:
        """Drops the cache's pool and every entry's evidence, keeping entries and policy: the
        similarities observed belong to the model they were measured with, and a cache
        re-embedded with another starts again from that model's prior."""
        ...

    async def sample_evidence(self, cache_id: str, limit: int) -> list[bytes]:
        """The evidence of up to `limit` entries of the cache that have any (for statistics;
        which ones is the store's choice)."""
        ...

    async def cache_policy(self, cache_id: str) -> str | None:
        """The cache's hit policy as set (a JSON object), or None when none is set."""
        ...

    async def policy_count(self) -> int:
        """How many caches have a hit policy set (held or not)."""
        ...

    async def policy_cache_ids(self) -> list[str]:
        """The caches that have a hit policy set (held or not), sorted."""
        ...

    async def set_cache_policy(self, cache_id: str, policy: str | None) -> None:
        """Sets (None: removes) the cache's hit policy. It outlives a flush of the entries;
        it is configuration, not data. Durable when it returns."""
        ...
