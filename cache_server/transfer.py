"""Moving caches between stores and machines: a cache's entries read out with their vectors
(the ExportEntries RPC) and stored again from such an export (ImportEntries), by the cache
server that owns the store, never by a second process opening it (`make export-cache`, `make
import-cache`; the file is cache_server.transfer_file, the program cache_server.transfer_cli).

An export reads a cache in id order, in batches (as cache_server.reindex does), from the ids
it held when its export began: an entry stored meanwhile may be left out, one that expires or
goes meanwhile is. A vector goes out with the identity of the model it came from (the cache's
record), and only when that is known: a cache being re-embedded exports its prompts alone.

An import stores one batch per call, each entry under the id computed again for its cache (so
importing twice replaces, never duplicates), with its times and cost. A vector is used as it
is when it came from the model the embedder serves now and fits (its dimension, finite, unit
length); every other prompt is re-embedded, in batches. The limits are Set's, but an entry
that breaks one is refused on its own, and said why, never the whole batch. An import never
evicts: once the cache is at max_cache_size its new entries are refused (reason
"max_cache_size"), so that moving a large cache into a smaller one neither keeps an
arbitrary part of it silently nor pushes out what the cache held. The entries' own checks:
cache_server.transfer_entries. The batch is stored with one store.put_many (pipelined on
Redis), each entry as `put` would store it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cache_server import metrics
from cache_server.cache_types import CachePolicy, FloatArray
from cache_server.embedder_client import EmbedderModel, EmbedderUnavailableError
from cache_server.entries import CacheEntry, InvalidInputError, check_cache_id
from cache_server.reindex import in_progress
from cache_server.store.base import CacheLimitError, CacheStore, StoreConflictError
from cache_server.store.bulk import put_many
from cache_server.transfer_entries import (
    ImportOutcome,
    Incoming,
    Refusal,
    Refused,
    checked_entry,
    too_many_caches,
    usable_vector,
)

__all__ = ["CacheTransfer", "ExportChunk", "ImportOutcome", "Incoming", "Refusal"]

MAX_BATCH = 1024  # entries per export read or import call
DEFAULT_EXPORT_BATCH = 256
CHUNK_BYTES = 1 << 20  # an export chunk stays near this (gRPC messages are capped at 16 MiB)
EMBED_BATCH = 32  # prompts per embedder call when re-embedding: one model run, a short call

Embed = Callable[[Sequence[str]], Awaitable[FloatArray]]
ServedModel = Callable[[], Awaitable[EmbedderModel | None]]


@dataclass(frozen=True)
class ExportChunk:
    cache_id: str
    total: int  # live entries the cache held when its export began
    model: str  # the identity of the model the vectors came from; "" when they carry none
    dimension: int  # of the vectors; 0 when they carry none
    entries: list[tuple[CacheEntry, FloatArray | None]]


def check_batch_size(value: int, default: int) -> int:
    if value == 0:
        return default
    if not 1 <= value <= MAX_BATCH:
        raise InvalidInputError(f"batch_size {value} must be between 1 and {MAX_BATCH}")
    return value


class CacheTransfer:
    def __init__(
        self,
        store: CacheStore,
        embed: Embed,
        served_model: ServedModel,
        policy: CachePolicy,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self._embed = embed
        self._served_model = served_model
        self.policy = policy
        self._clock = clock

    # -- export ------------------------------------------------------------------------

    async def export(
        self, cache_id: str, batch_size: int = 0, *, with_vectors: bool = True
    ) -> AsyncIterator[ExportChunk]:
        """The cache's live entries in chunks of at most `batch_size` (and near CHUNK_BYTES);
        one empty chunk when it holds none."""
        cache_id = check_cache_id(cache_id)
        batch_size = check_batch_size(batch_size, DEFAULT_EXPORT_BATCH)
        held = await self.store.vector_model(cache_id)
        model = held if with_vectors and held and in_progress(held) is None else ""
        ids = await self.store.entry_ids(cache_id)
        total = await self.store.count(cache_id, self._clock())
        sent = False
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            found = await self.store.entries_with_vectors(cache_id, batch, self._clock())
            pending: list[tuple[CacheEntry, FloatArray | None]] = []
            size = 0
            for entry, vector in found:
                weight = len(entry.prompt) + len(entry.response) + 4 * vector.shape[0] + 200
                if pending and size + weight > CHUNK_BYTES:
                    yield self._chunk(cache_id, total, model, pending)
                    sent, pending, size = True, [], 0
                pending.append((entry, vector if model else None))
                size += weight
            if pending:
                yield self._chunk(cache_id, total, model, pending)
                sent = True
        if not sent:
            yield ExportChunk(cache_id, total, "", 0, [])

    @staticmethod
    def _chunk(
        cache_id: str, total: int, model: str, entries: list[tuple[CacheEntry, FloatArray | None]]
    ) -> ExportChunk:
        first = entries[0][1]
        dimension = int(first.shape[0]) if first is not None else 0
        return ExportChunk(cache_id, total, model if dimension else "", dimension, entries)

    # -- import ------------------------------------------------------------------------

    async def import_batch(
        self, cache_id: str, model: str, entries: Sequence[Incoming]
    ) -> ImportOutcome:
        """Stores the entries in the cache (see the module's docstring for the rules)."""
        cache_id = check_cache_id(cache_id)
        if len(entries) > MAX_BATCH:
            raise InvalidInputError(f"{len(entries)} entries; at most {MAX_BATCH} per call")
        outcome = ImportOutcome()
        await self._import(cache_id, model, entries, outcome)
        outcome.refused.sort(key=lambda refusal: refusal.index)
        return outcome

    async def _import(
        self, cache_id: str, model: str, entries: Sequence[Incoming], outcome: ImportOutcome
    ) -> None:
        now = self._clock()
        valid: dict[str, tuple[int, CacheEntry]] = {}  # by id: the last of the batch wins
        for index, incoming in enumerate(entries):
            if incoming.expires_at is not None and incoming.expires_at <= now:
                outcome.skipped_expired += 1
                continue
            try:
                entry = checked_entry(cache_id, incoming, now, self.policy)
            except Refused as refused:
                outcome.refused.append(Refusal(index, refused.reason, str(refused)))
                continue
            earlier = valid.pop(entry.id, None)
            if earlier is not None:
                outcome.refused.append(
                    Refusal(
                        earlier[0],
                        "duplicate",
                        "the same prompt and attributes come again later: the later is kept",
                    )
                )
            valid[entry.id] = (index, entry)
        if not valid:
            return
        limit = self.policy.max_caches
        if not await self.store.admits(cache_id, limit):
            for index, _ in valid.values():
                outcome.refused.append(Refusal(index, "max_caches", too_many_caches(limit)))
            return
        kept = await self._within_capacity(cache_id, list(valid.values()), now, outcome)
        if not kept:
            return
        served = await self._served_model()
        if served is None:
            raise EmbedderUnavailableError("no embedder answers: the served model is not known")
        identity = served.onnx_sha256 or served.model_id
        # Before anything is stored: a cache of another model or dimension refuses the batch.
        await self.store.check_dimension(cache_id, served.dimension, identity)
        vectors, reembedded = await self._vectors(
            [entries[i] for i, _ in kept], model == identity, served.dimension
        )
        await self._put_all(kept, vectors, reembedded, identity, now, outcome)

    async def _within_capacity(
        self,
        cache_id: str,
        candidates: list[tuple[int, CacheEntry]],
        now: float,
        outcome: ImportOutcome,
    ) -> list[tuple[int, CacheEntry]]:
        """The candidates that fit in the cache without evicting: all of them when there is
        room for all; else replacements of entries it holds, and new ones while room lasts."""
        cap = self.policy.max_cache_size
        size = await self.store.count(cache_id, now)
        if size + len(candidates) <= cap:
            return candidates
        # One read for the batch (entries with their vectors: the store's one batch read).
        found = await self.store.entries_with_vectors(cache_id, [e.id for _, e in candidates], now)
        held = {entry.id for entry, _ in found}
        kept = []
        for index, entry in candidates:
            new = entry.id not in held
            if new and size >= cap:
                outcome.refused.append(
                    Refusal(
                        index,
                        "max_cache_size",
                        f"cache {cache_id!r} is full ({cap} entries, max_cache_size): an "
                        "import never evicts; flush or delete entries, or raise the limit",
                    )
                )
                continue
            size += new
            kept.append((index, entry))
        return kept

    async def _vectors(
        self, incoming: list[Incoming], same_model: bool, dimension: int
    ) -> tuple[list[FloatArray], set[int]]:
        """Each entry's vector: its own when it came from the model served and fits, else its
        prompt embedded again (in batches of EMBED_BATCH); and the positions re-embedded."""
        vectors: list[FloatArray | None] = [
            usable_vector(i.vector, dimension) if same_model else None for i in incoming
        ]
        missing = [n for n, v in enumerate(vectors) if v is None]
        for start in range(0, len(missing), EMBED_BATCH):
            batch = missing[start : start + EMBED_BATCH]
            embedded = await self._embed([incoming[n].prompt for n in batch])
            for n, vector in zip(batch, embedded, strict=True):
                vectors[n] = np.asarray(vector, dtype=np.float32)
        return [v for v in vectors if v is not None], set(missing)

    async def _put_all(
        self,
        kept: list[tuple[int, CacheEntry]],
        vectors: list[FloatArray],
        reembedded: set[int],
        model: str,
        now: float,
        outcome: ImportOutcome,
    ) -> None:
        """Stores the kept entries with one put_many (pipelined on Redis); an entry that would
        open one cache too many (another was opened since the check) is refused alone."""
        cap, limit = self.policy.max_cache_size, self.policy.max_caches
        items = [(entry, vectors[n]) for n, (_, entry) in enumerate(kept)]
        results = await put_many(self.store, items, cap, now, max_caches=limit, model=model)
        for position, ((index, _), stored) in enumerate(zip(kept, results, strict=True)):
            if isinstance(stored, CacheLimitError):
                outcome.refused.append(Refusal(index, "max_caches", too_many_caches(limit)))
            elif isinstance(stored, StoreConflictError):
                raise stored  # the cache changed model or dimension since the check
            else:
                metrics.EVICTIONS.inc(stored.evicted)  # only when others write at the same time
                outcome.imported += 1
                outcome.reembedded += position in reembedded
