"""The verified hit policy's data in the Redis store (see redis_layout for the keys): an
entry's observations in the `ev` field of its hash, the cache's pool in `{token}:pool`, its
policy in `{token}:policy`. An observation is one Lua script (OBSERVE), so replicas adding
at once lose none, and an entry stored again since it was judged does not take it."""

from __future__ import annotations

from functools import partial
from typing import Any

from cache_server.learned_thresholds import evidence
from cache_server.store import embedded_evidence, redis_scripts
from cache_server.store.redis_connection import RedisConnection


class RedisEvidence(RedisConnection):
    # sample_evidence walks the lru set, most recently used first, in pages of `sample_page`
    # entries (one script run each), and looks at no more than `sample_scan` entries: bounded
    # work whatever the cache's size, at the price of missing evidence on entries used less
    # recently than those.
    sample_page = 500
    sample_scan = 10_000

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._observe_script = self._redis.register_script(redis_scripts.OBSERVE)
        self._sample_script = self._redis.register_script(redis_scripts.SAMPLE_EVIDENCE)
        self._inherit_script = self._redis.register_script(redis_scripts.INHERIT_EVIDENCE)

    async def evidence(self, cache_id: str, entry_id: str) -> bytes:
        key = self.layout.cache(cache_id).entry(entry_id)
        raw = await self._call(lambda: self._redis.hget(key, "ev"))
        return bytes(raw) if raw else b""

    async def observe(
        self, cache_id: str, entry_id: str, entry_created_at: float, record: bytes
    ) -> bool:
        embedded_evidence.check_record(record)  # the same check as the embedded store's
        keys = self.layout.cache(cache_id)
        script_keys = [keys.entry(entry_id), keys.meta, keys.pool]
        args: list[Any] = [
            repr(entry_created_at),  # as the put script stored it (entry_fields)
            record,
            evidence.MAX_PER_ENTRY * evidence.RECORD_BYTES,
            evidence.MAX_PER_CACHE * evidence.RECORD_BYTES,
        ]
        took = await self._call(lambda: self._observe_script(keys=script_keys, args=args))
        return bool(took)

    async def inherit_evidence(
        self, cache_id: str, entry_id: str, entry_created_at: float, blob: bytes
    ) -> bool:
        key = self.layout.cache(cache_id).entry(entry_id)
        kept = evidence.append(b"", blob, evidence.MAX_PER_ENTRY)
        args: list[Any] = [repr(entry_created_at), kept]
        took = await self._call(lambda: self._inherit_script(keys=[key], args=args))
        return bool(took)

    async def pooled_evidence(self, cache_id: str) -> bytes:
        pool = self.layout.cache(cache_id).pool
        raw = await self._call(lambda: self._redis.get(pool))
        return bytes(raw) if raw else b""

    async def sample_evidence(self, cache_id: str, limit: int) -> list[bytes]:
        keys = self.layout.cache(cache_id)
        found: dict[bytes, bytes] = {}  # by entry id: a page boundary may show one twice
        start = 0
        while len(found) < limit and start < self.sample_scan:
            args = [keys.entry_prefix, start, self.sample_page, limit - len(found)]
            page = partial(self._sample_script, keys=[keys.lru], args=args)
            reply = await self._call(page)
            listed, looked, pairs = int(reply[0]), int(reply[1]), reply[2:]
            for entry_id, blob in zip(pairs[::2], pairs[1::2], strict=True):
                if len(found) < limit:
                    found.setdefault(entry_id, bytes(blob))
            if looked == listed < self.sample_page:  # the end of the lru set
                break
            start += looked
        return list(found.values())

    async def cache_policy(self, cache_id: str) -> str | None:
        key = self.layout.cache(cache_id).policy
        raw = await self._call(lambda: self._redis.get(key))
        return None if raw is None else bytes(raw).decode()

    async def policy_count(self) -> int:
        return int(await self._call(lambda: self._redis.hlen(self.layout.policies)))

    async def policy_cache_ids(self) -> list[str]:
        held = await self._call(lambda: self._redis.hvals(self.layout.policies))
        return sorted(bytes(raw).decode() for raw in held)

    async def set_cache_policy(self, cache_id: str, policy: str | None) -> None:
        keys = self.layout.cache(cache_id)

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                if policy is None:
                    pipe.delete(keys.policy)
                    pipe.hdel(self.layout.policies, keys.token)
                else:
                    pipe.set(keys.policy, policy)
                    pipe.hset(self.layout.policies, keys.token, cache_id)
                await pipe.execute()

        await self._call(write)
