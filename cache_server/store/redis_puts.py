"""RedisStore's writes of entries: `put` one at a time and `put_many` pipelined, both through
the one PUT script (redis_scripts), with its arguments built and its answer read by the same
two methods here, so an entry put either way is checked, stored and evicted for alike."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from redis import exceptions as redis_errors

from cache_server.entries import CacheEntry, prompt_key
from cache_server.store import redis_scripts
from cache_server.store.base import (
    CacheLimitError,
    FloatArray,
    ModelMismatchError,
    PutOutcome,
    StoreConflictError,
)
from cache_server.store.bulk import PutResult
from cache_server.store.redis_layout import entry_fields, index_arguments
from cache_server.store.redis_queries import RedisQueries, dimension_conflict

PutCall = tuple[list[str], list[Any]]  # the PUT script's keys and arguments for one entry


class RedisPuts(RedisQueries):
    # Entries per round trip of put_many. redis-py times a pipeline's whole send against the
    # socket timeout (timeout_s, 2 s by default), and Redis reads it only as fast as it runs
    # the scripts (each HSET indexes the vector; HNSW inserts cost most): 64 entries are ~0.2
    # MB at 768 dims and well under a second of work at 1M entries, and round trips of 64
    # already hide the network's latency behind the scripts' own time.
    put_batch = 64

    def __init__(self, url: str, *, hnsw_m: int, hnsw_ef_runtime: int, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._hnsw_m = hnsw_m
        self._hnsw_ef_runtime = hnsw_ef_runtime
        self._put_script = self._redis.register_script(redis_scripts.PUT)

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
        keys, args = self._put_call(entry, vector, max_entries, now, max_caches, model)
        reply = await self._call(lambda: self._put_script(keys=keys, args=args))
        return self._put_outcome(entry, args, reply, max_caches, model)

    async def put_many(
        self,
        items: Sequence[tuple[CacheEntry, FloatArray]],
        max_entries: int,
        now: float,
        *,
        max_caches: int,
        model: str = "",
    ) -> list[PutResult]:
        """bulk.put_many: the PUT script per item, `put_batch` items per round trip."""
        results: list[PutResult] = []
        for start in range(0, len(items), self.put_batch):
            batch = items[start : start + self.put_batch]
            calls = [
                self._put_call(entry, vector, max_entries, now, max_caches, model)
                for entry, vector in batch
            ]
            replies = await self._call(partial(self._run_puts, calls))
            for (entry, _), (_, args), reply in zip(batch, calls, replies, strict=True):
                try:
                    results.append(self._put_outcome(entry, args, reply, max_caches, model))
                except (CacheLimitError, StoreConflictError) as refused:
                    results.append(refused)
        return results

    def _put_call(
        self,
        entry: CacheEntry,
        vector: FloatArray,
        max_entries: int,
        now: float,
        max_caches: int,
        model: str,
    ) -> PutCall:
        """The PUT script's keys and arguments that store `entry` (see the script)."""
        blob = np.ascontiguousarray(vector, dtype="<f4")
        dimension = int(blob.shape[0])
        keys = self.layout.cache(entry.cache_id)
        create = index_arguments(
            keys, dimension, self._algorithm, self._hnsw_m, self._hnsw_ef_runtime
        )
        ttl_ms = ""
        if entry.expires_at is not None:
            # Relative to the caller's clock, so Redis and the cache agree on "now".
            ttl_ms = str(max(1, int((entry.expires_at - now) * 1000)))
        args: list[Any] = [
            entry.cache_id,
            keys.token,
            entry.id,
            dimension,
            max_entries,
            max_caches,
            repr(now),
            repr(entry.expires_at) if entry.expires_at is not None else "",
            ttl_ms,
            keys.entry_prefix,
            keys.index,
            model,
            json.dumps(create, ensure_ascii=False),
            *entry_fields(entry, prompt_key(entry.prompt), blob.tobytes()),
        ]
        script_keys = [
            self.layout.registry,
            keys.meta,
            keys.entry(entry.id),
            keys.lru,
            keys.exp,
            keys.stats,
        ]
        return script_keys, args

    def _put_outcome(
        self, entry: CacheEntry, args: list[Any], reply: Any, max_caches: int, model: str
    ) -> PutOutcome:
        """What the PUT script answered for `entry` (called with `args`): its outcome, or the
        refusal raised (CacheLimitError, StoreConflictError, ModelMismatchError)."""
        status, value = reply
        dimension = int(args[3])
        if status == b"limit":
            raise CacheLimitError(
                f"cache {entry.cache_id!r} would be one cache too many: this deployment holds "
                f"at most {max_caches} caches (max_caches); flush caches no longer used, or "
                "raise the limit"
            )
        if status == b"conflict":
            self._dimensions[entry.cache_id] = int(value)
            raise dimension_conflict(entry.cache_id, int(value), dimension)
        if status == b"model":
            self._models.pop(entry.cache_id, None)
            raise ModelMismatchError(entry.cache_id, value.decode(), model)
        if status == b"collision":
            raise StoreConflictError(
                f"cache ids {entry.cache_id!r} and {value.decode()!r} share the key token "
                f"{args[1]}; rename one of them"
            )
        self._dimensions[entry.cache_id] = dimension
        if model:
            self._models[entry.cache_id] = (model, time.monotonic())
        return PutOutcome(evicted=int(value))

    async def _run_puts(self, calls: list[PutCall]) -> list[Any]:
        """The PUT script once per call, in order, in one pipelined round trip (EVALSHA; one
        more, loading the script, when Redis has lost it: restarted, SCRIPT FLUSH). An error
        reply (out of memory...) is raised, after every reply was read."""
        replies: list[Any] = []
        pending, reloaded = calls, False
        while pending:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args in pending:
                    pipe.evalsha(self._put_script.sha, len(keys), *keys, *args)
                answers = list(await pipe.execute(raise_on_error=False))
            lost = next(
                (n for n, a in enumerate(answers) if isinstance(a, redis_errors.NoScriptError)),
                len(answers),
            )
            for answer in answers[:lost]:
                if isinstance(answer, Exception):
                    raise answer
            replies += answers[:lost]
            pending = pending[lost:]
            if pending:
                if reloaded:
                    raise answers[lost]
                # From the first call that found no script on: those before it ran, in order.
                self._put_script.sha = await self._redis.script_load(self._put_script.script)
                reloaded = True
        return replies
