"""RedisStore's reads: look-ups by id, exact and semantic, counts and counters, and the
dimension each cache's vectors have (see redis_layout for the keys and the index)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from redis import exceptions as redis_errors

from cache_server.entries import CacheEntry, normalize_prompt, prompt_key
from cache_server.store.base import FloatArray, ModelMismatchError, StoreConflictError
from cache_server.store.redis_access import RedisAccess
from cache_server.store.redis_connection import RedisConnection
from cache_server.store.redis_hybrid import ScopeShares, policy_clause
from cache_server.store.redis_layout import (
    ENTRY_FIELDS,
    CacheKeys,
    attribute_filter,
    decode_entry,
    live_filter,
)

MODEL_HINT_S = 5.0
MAX_MODEL_HINTS = 10_000


def dimension_conflict(cache_id: str, held: int, got: int) -> StoreConflictError:
    return StoreConflictError(
        f"cache {cache_id!r} holds {held}-dim vectors; got {got} (the embedding model "
        "changed to one of another size: flush the cache)"
    )


def _no_index(exc: redis_errors.ResponseError) -> bool:
    message = str(exc).lower()
    return "no such index" in message or "unknown index name" in message


class RedisQueries(RedisConnection):
    def __init__(
        self,
        url: str,
        *,
        algorithm: Literal["FLAT", "HNSW"],
        prefix: str,
        timeout_s: float,
        access: RedisAccess | None,
    ) -> None:
        super().__init__(url, prefix=prefix, timeout_s=timeout_s, access=access)
        self._algorithm = algorithm  # of the indexes this store creates
        self._shares = ScopeShares()  # scoped searches on FLAT indexes (redis_hybrid)
        # cache_id -> dimension, as last seen in Redis: a hint (another replica may have
        # flushed the cache since); Redis's meta key is the truth.
        self._dimensions: dict[str, int] = {}
        # cache_id -> (model identity or None, monotonic time read): read again after
        # MODEL_HINT_S, so a replica sees another's flush and refill within that.
        self._models: dict[str, tuple[str | None, float]] = {}

    def vector_dimension(self, cache_id: str) -> int | None:
        return self._dimensions.get(cache_id)

    async def _dimension_in_redis(self, keys: CacheKeys) -> int | None:
        raw = await self._call(lambda: self._redis.hget(keys.meta, "dim"))
        if raw is None:
            self._dimensions.pop(keys.cache_id, None)
            return None
        self._dimensions[keys.cache_id] = int(raw)
        return int(raw)

    async def check_dimension(self, cache_id: str, dimension: int, model: str = "") -> None:
        keys = self.layout.cache(cache_id)
        raw = await self._call(lambda: self._redis.hmget(keys.meta, ["dim", "model"]))
        held_dim, held_model = raw if raw else (None, None)
        if held_dim is not None and int(held_dim) != dimension:
            self._dimensions[cache_id] = int(held_dim)
            raise dimension_conflict(cache_id, int(held_dim), dimension)
        if model and held_model is not None and held_model.decode() != model:
            raise ModelMismatchError(cache_id, held_model.decode(), model)

    async def vector_model(self, cache_id: str) -> str | None:
        known = self._models.get(cache_id)
        now = time.monotonic()
        if known is not None and now - known[1] < MODEL_HINT_S:
            return known[0]
        meta = self.layout.cache(cache_id).meta
        raw = await self._call(lambda: self._redis.hget(meta, "model"))
        model = raw.decode() if raw is not None else None
        self._models[cache_id] = (model, now)
        if len(self._models) > MAX_MODEL_HINTS:
            self._models.pop(next(iter(self._models)))
        return model

    async def get(self, cache_id: str, entry_id: str, now: float) -> CacheEntry | None:
        key = self.layout.cache(cache_id).entry(entry_id)
        raw = await self._call(lambda: self._redis.hgetall(key))
        return decode_entry(cache_id, raw, now) if raw else None

    async def entries_with_vectors(
        self, cache_id: str, entry_ids: Sequence[str], now: float
    ) -> list[tuple[CacheEntry, FloatArray]]:
        keys = self.layout.cache(cache_id)
        fields = (*ENTRY_FIELDS, "vector")

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry_id in entry_ids:
                    pipe.hmget(keys.entry(entry_id), fields)
                return list(await pipe.execute())

        if not entry_ids:
            return []
        out: list[tuple[CacheEntry, FloatArray]] = []
        for values in await self._call(read):
            if values[0] is None:  # gone (deleted, evicted, expired by Redis)
                continue
            raw = {name.encode(): value for name, value in zip(fields, values, strict=True)}
            entry = decode_entry(cache_id, raw, now)
            if entry is not None:
                out.append((entry, np.frombuffer(raw[b"vector"], dtype="<f4").copy()))
        return out

    async def _search(self, keys: CacheKeys, *arguments: Any) -> list[Any] | None:
        """FT.SEARCH on the cache's index; None when the cache has none."""
        try:
            reply: list[Any] = await self._call(
                lambda: self._redis.execute_command("FT.SEARCH", keys.index, *arguments)
            )
        except redis_errors.ResponseError as exc:
            if _no_index(exc):
                self._dimensions.pop(keys.cache_id, None)
                return None
            raise
        return reply

    async def _query_ids(self, keys: CacheKeys, query: str, limit: int) -> list[str]:
        reply = await self._search(keys, query, "NOCONTENT", "LIMIT", "0", limit, "DIALECT", 2)
        start = len(keys.entry_prefix)
        return [k.decode()[start:] for k in reply[1:]] if reply else []

    async def find_exact(
        self, cache_id: str, prompt: str, attributes: Mapping[str, str], now: float
    ) -> CacheEntry | None:
        keys = self.layout.cache(cache_id)
        query = f"@pkey:{{{prompt_key(prompt)}}} {live_filter(attributes, now)}"
        fields = ("RETURN", len(ENTRY_FIELDS), *ENTRY_FIELDS)
        sort = ("SORTBY", "created_at", "DESC")
        reply = await self._search(keys, query, *fields, *sort, "LIMIT", 0, 20, "DIALECT", 2)
        wanted = normalize_prompt(prompt)
        for raw in _documents(reply or []):
            entry = decode_entry(cache_id, raw, now)
            if entry is not None and normalize_prompt(entry.prompt) == wanted:
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
        keys = self.layout.cache(cache_id)
        dimension = int(vector.shape[0])
        hint = self._dimensions.get(cache_id)
        if hint is not None and hint != dimension:
            hint = await self._dimension_in_redis(keys)  # another replica may have flushed
            if hint is not None and hint != dimension:
                return []
        policy = await self._hybrid_policy(keys, attributes)
        query = f"({live_filter(attributes, now)})=>[KNN {k} @vector $vec{policy} AS distance]"
        blob = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        fields = ("RETURN", len(ENTRY_FIELDS) + 1, "distance", *ENTRY_FIELDS)
        arguments = (*self._timeout, "PARAMS", 2, "vec", blob, "SORTBY", "distance", *fields)
        try:
            reply = await self._search(keys, query, *arguments, "LIMIT", 0, k, "DIALECT", 2)
        except redis_errors.ResponseError:
            # The index holds another dimension than this replica thought: no match, as for
            # any cache of another dimension (a write would be refused).
            held = await self._dimension_in_redis(keys)
            if held is not None and held != dimension:
                return []
            raise
        if reply is None:
            return []
        self._dimensions[cache_id] = dimension
        out: list[tuple[CacheEntry, float]] = []
        for raw in _documents(reply):
            similarity = 1.0 - float(raw[b"distance"])
            if similarity < min_similarity:
                break
            entry = decode_entry(cache_id, raw, now)
            if entry is not None:
                out.append((entry, similarity))
        return out

    @property
    def _timeout(self) -> tuple[str, int]:
        # RediSearch's own query timeout (500 ms by default, ON_TIMEOUT RETURN) would cut a slow
        # search short and answer with what it had found so far, silently: a FLAT scan of 1M
        # vectors takes 100-250 ms here. Given the client's own timeout instead, a search that
        # slow fails (StoreUnavailableError) rather than answering with a wrong nearest entry.
        return "TIMEOUT", max(1, int(self.timeout_s * 1000))

    async def _hybrid_policy(self, keys: CacheKeys, attributes: Mapping[str, str]) -> str:
        """The KNN clause's HYBRID_POLICY for a search within `attributes`: named only for a
        FLAT index, by the scope's share of the cache (redis_hybrid); "" otherwise."""
        if not attributes or self._algorithm != "FLAT":
            return ""
        key = self._shares.key(keys.cache_id, attributes)
        share = self._shares.get(key)
        if share is None:
            scope = (attribute_filter(attributes), "NOCONTENT", *self._timeout, "LIMIT", 0, 0)

            async def ask() -> list[Any]:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.execute_command("FT.SEARCH", keys.index, *scope, "DIALECT", 2)
                    pipe.zcard(keys.lru)
                    return list(await pipe.execute(raise_on_error=False))

            counted, size = await self._call(ask)
            if isinstance(counted, Exception) or isinstance(size, Exception):
                return ""  # no index (yet): the search itself says what there is
            share = self._shares.put(key, int(counted[0]), int(size))
        return policy_clause(share)

    async def count(self, cache_id: str, now: float) -> int:
        keys = self.layout.cache(cache_id)

        async def ask() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zcard(keys.lru)
                pipe.zcount(keys.exp, "-inf", now)
                return list(await pipe.execute())

        size, expired = await self._call(ask)
        return int(size) - int(expired)

    async def counters(self, cache_id: str) -> dict[str, int]:
        stats = self.layout.cache(cache_id).stats
        raw = await self._call(lambda: self._redis.hgetall(stats))
        return {k.decode(): int(v) for k, v in raw.items()}


def _documents(reply: list[Any]) -> list[dict[bytes, bytes]]:
    """The returned fields of each document in an FT.SEARCH reply (RESP2: total, then key and
    flat field/value list per document). A document deleted between the index match and the
    loading of its fields (a concurrent delete, eviction or expiry) comes back with no field
    list at all: it is gone, so it is skipped."""
    return [dict(zip(d[::2], d[1::2], strict=True)) for d in reply[2::2] if d is not None]
