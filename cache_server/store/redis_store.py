"""The shared store: Redis with vector search (RediSearch), for many cache-server replicas.

This module writes (entries, one or many at a time: `redis_puts`); `redis_queries` reads,
`redis_connection` turns Redis's failures into the store's errors. Keys, index and the version
of their layout: `redis_layout`. Every change that spans keys is one of the Lua scripts in
`redis_scripts` (or one MULTI transaction), so replicas sharing one Redis, cancellations and
failures between round trips never leave an entry half stored or half removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, Literal

import numpy as np

from cache_server.store import redis_scripts
from cache_server.store.base import FloatArray, PurgeOutcome
from cache_server.store.redis_access import RedisAccess, redacted_url
from cache_server.store.redis_evidence import RedisEvidence
from cache_server.store.redis_feedback import RedisFeedback
from cache_server.store.redis_layout import CacheKeys, attribute_filter
from cache_server.store.redis_puts import RedisPuts
from cache_server.store.redis_queries import dimension_conflict

__all__ = ["RedisAccess", "RedisStore", "redacted_url"]


class RedisStore(RedisPuts, RedisFeedback, RedisEvidence):
    backend = "redis"
    flush_batch = 1000  # entries one flush step deletes (each step is atomic)
    purge_batch = 1000  # expired ids listed per cache and purge step

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "semcache",
        algorithm: Literal["FLAT", "HNSW"] = "FLAT",
        hnsw_m: int = 16,
        hnsw_ef_runtime: int = 64,
        timeout_s: float = 2.0,
        access: RedisAccess | None = None,
    ) -> None:
        super().__init__(
            url,
            algorithm=algorithm,
            hnsw_m=hnsw_m,
            hnsw_ef_runtime=hnsw_ef_runtime,
            prefix=prefix,
            timeout_s=timeout_s,
            access=access,
        )
        self._flush_step = self._redis.register_script(redis_scripts.FLUSH_STEP)
        self._purge = self._redis.register_script(redis_scripts.PURGE)
        self._add_counters = self._redis.register_script(redis_scripts.ADD_COUNTERS)
        self._replace_vectors = self._redis.register_script(redis_scripts.REPLACE_VECTORS)
        self._set_model = self._redis.register_script(redis_scripts.SET_MODEL)

    @property
    def client(self) -> Any:
        """The Redis client, for state that lives beside the caches (cache_server.limits)."""
        return self._redis

    # -- re-embedding (cache_server.reindex) ------------------------------------------------

    async def cache_ids(self) -> list[str]:
        registry = await self._call(lambda: self._redis.hvals(self.layout.registry))
        return sorted(raw.decode() for raw in registry)

    async def forget_learning(self, cache_id: str) -> None:
        keys = self.layout.cache(cache_id)
        await self._call(lambda: self._redis.delete(keys.pool))
        ids = await self.entry_ids(cache_id)
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]

            async def drop(batch: list[str] = batch) -> None:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for entry_id in batch:
                        pipe.hdel(keys.entry(entry_id), "ev")
                    await pipe.execute()

            await self._call(drop)

    async def entry_ids(self, cache_id: str) -> list[str]:
        lru = self.layout.cache(cache_id).lru
        ids: list[str] = []
        start, page = 0, 10_000
        while members := await self._call(
            partial(self._redis.zrange, lru, start, start + page - 1)
        ):
            ids.extend(m.decode() for m in members)
            start += len(members)
        return sorted(set(ids))

    async def replace_vectors(self, cache_id: str, vectors: Mapping[str, FloatArray]) -> int:
        if not vectors:
            return 0
        keys = self.layout.cache(cache_id)
        held = await self._dimension_in_redis(keys)
        blobs = [np.ascontiguousarray(v, dtype="<f4") for v in vectors.values()]
        for blob in blobs:
            if held is not None and held != blob.shape[0]:
                raise dimension_conflict(cache_id, held, int(blob.shape[0]))
        entry_keys = [keys.entry(entry_id) for entry_id in vectors]
        args = [blob.tobytes() for blob in blobs]
        replaced = await self._call(lambda: self._replace_vectors(keys=entry_keys, args=args))
        return int(replaced)

    async def set_vector_model(self, cache_id: str, model: str) -> None:
        meta = self.layout.cache(cache_id).meta
        await self._call(lambda: self._set_model(keys=[meta], args=[model]))
        self._models.pop(cache_id, None)

    # -- writes ---------------------------------------------------------------------------

    async def _drop(self, keys: CacheKeys, entry_ids: list[str]) -> int:
        """Deletes the entries (hash, lru and exp members) in one transaction; the number
        the cache held."""

        async def drop() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                for entry_id in entry_ids:
                    pipe.delete(keys.entry(entry_id))
                pipe.zrem(keys.lru, *entry_ids)
                pipe.zrem(keys.exp, *entry_ids)
                return list(await pipe.execute())

        results = await self._call(drop)
        return max(int(sum(results[: len(entry_ids)])), int(results[len(entry_ids)]))

    async def touch(self, cache_id: str, entry_id: str, now: float) -> None:
        lru = self.layout.cache(cache_id).lru
        await self._call(lambda: self._redis.zadd(lru, {entry_id: now}, xx=True))

    async def delete(self, cache_id: str, entry_id: str) -> bool:
        return await self._drop(self.layout.cache(cache_id), [entry_id]) > 0

    async def delete_matching(self, cache_id: str, attributes: Mapping[str, str]) -> int:
        keys = self.layout.cache(cache_id)
        deleted = 0
        while True:
            ids = await self._query_ids(keys, attribute_filter(attributes), 1000)
            if not ids:
                return deleted
            deleted += await self._drop(keys, ids)

    async def flush(self, cache_id: str) -> int:
        keys = self.layout.cache(cache_id)
        script_keys = [self.layout.registry, keys.meta, keys.lru, keys.exp, keys.pool]
        args = [keys.token, keys.entry_prefix, keys.index, self.flush_batch]
        deleted, done = 0, 0
        while not done:
            step, done = await self._call(lambda: self._flush_step(keys=script_keys, args=args))
            deleted += int(step)
        await self._forget_feedback(cache_id)
        self._dimensions.pop(cache_id, None)
        self._models.pop(cache_id, None)
        return deleted

    async def purge_expired(self, now: float) -> PurgeOutcome:
        registry = await self._call(lambda: self._redis.hvals(self.layout.registry))
        pending = [self.layout.cache(raw.decode()) for raw in registry]
        expired: dict[str, int] = {}
        while pending:
            listing = await self._call(partial(self._list_expired, pending, now))
            again = []
            for keys, ids in zip(pending, listing, strict=True):
                if not ids:
                    continue
                removed = await self._purge_listed(keys, ids, now)
                if removed:
                    expired[keys.cache_id] = expired.get(keys.cache_id, 0) + removed
                if len(ids) == self.purge_batch:
                    again.append(keys)
            pending = again
        return PurgeOutcome(expired=expired)

    async def _list_expired(self, caches: list[CacheKeys], now: float) -> list[list[str]]:
        """Per cache, up to `purge_batch` ids expired at `now`, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys in caches:
                pipe.zrangebyscore(keys.exp, "-inf", now, start=0, num=self.purge_batch)
            return [[i.decode() for i in ids] for ids in await pipe.execute()]

    async def _purge_listed(self, keys: CacheKeys, ids: list[str], now: float) -> int:
        """Removes (and counts) those of the listed entries still expired: the script checks
        each again, so one re-stored since it was listed stays."""
        args = [repr(now), keys.entry_prefix, *ids]
        script_keys = [keys.exp, keys.lru, keys.stats]
        return int(await self._call(lambda: self._purge(keys=script_keys, args=args)))

    # -- caches and counters (shared by every replica) --------------------------------------

    async def admits(self, cache_id: str, max_caches: int) -> bool:
        token = self.layout.cache(cache_id).token

        async def ask() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hexists(self.layout.registry, token)
                pipe.hlen(self.layout.registry)
                return list(await pipe.execute())

        member, count = await self._call(ask)
        return bool(member) or int(count) < max_caches

    async def add_counters(self, cache_id: str, counts: Mapping[str, int]) -> bool:
        keys = self.layout.cache(cache_id)
        args: list[Any] = [item for pair in counts.items() for item in pair]
        counted = await self._call(
            lambda: self._add_counters(keys=[keys.meta, keys.stats], args=args)
        )
        return bool(counted)

    async def reset_counters(self, cache_id: str) -> None:
        stats = self.layout.cache(cache_id).stats
        await self._call(lambda: self._redis.delete(stats))
