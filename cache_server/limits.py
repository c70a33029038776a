"""The counters behind each client's limits: a token bucket of requests per second, the requests
it has in flight, and what its key spent upstream today.

In memory for one cache server (the embedded store: one server holds the caches, however many
gateways call it); in Redis when the store is Redis, so that the limits hold across every
replica sharing it. A client is "key:<id>" for a keyed caller, "ip:<address>" otherwise.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Protocol

from cache_server.store.base import StoreUnavailableError


class Limiter(Protocol):
    async def take(self, client: str, rate_per_s: float, burst: int) -> float:
        """0 when one more request may go ahead now; else the seconds to wait."""
        ...

    async def enter(self, client: str, limit: int, slot: str) -> bool:
        """Whether a request (`slot`, unique) may start while `limit` of the client's run."""
        ...

    async def leave(self, client: str, slot: str) -> None: ...

    async def spent(self, tenant: str, day: str) -> tuple[int, int]:
        """Upstream requests and tokens of `tenant` on `day` (YYYY-MM-DD, UTC)."""
        ...

    async def spend(self, tenant: str, day: str, requests: int, tokens: int) -> None: ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class MemoryLimiter:
    """One process's limits. Remembers at most `max_clients` buckets (least recent forgotten)."""

    def __init__(self, max_clients: int = 10_000) -> None:
        self._max_clients = max_clients
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._running: dict[str, set[str]] = {}
        self._spent: dict[tuple[str, str], list[int]] = {}

    def take_now(self, client: str, rate_per_s: float, burst: int, now: float) -> float:
        bucket = self._buckets.pop(client, None) or _Bucket(float(burst), now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate_per_s)
        bucket.updated = now
        self._buckets[client] = bucket
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate_per_s

    async def take(self, client: str, rate_per_s: float, burst: int) -> float:
        return self.take_now(client, rate_per_s, burst, time.monotonic())

    async def enter(self, client: str, limit: int, slot: str) -> bool:
        running = self._running.setdefault(client, set())
        if len(running) >= limit:
            return False
        running.add(slot)
        return True

    async def leave(self, client: str, slot: str) -> None:
        running = self._running.get(client)
        if running is not None:
            running.discard(slot)
            if not running:
                del self._running[client]

    async def spent(self, tenant: str, day: str) -> tuple[int, int]:
        requests, tokens = self._spent.get((tenant, day), (0, 0))
        return requests, tokens

    async def spend(self, tenant: str, day: str, requests: int, tokens: int) -> None:
        for stale in [k for k in self._spent if k[1] != day]:
            del self._spent[stale]  # yesterday's counts are no longer asked for
        counts = self._spent.setdefault((tenant, day), [0, 0])
        counts[0] += requests
        counts[1] += tokens


# KEYS[1] bucket hash; ARGV rate per s, burst. Redis's own clock, so that replicas agree.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return tostring(wait)
"""
# KEYS[1] running zset (slot -> expiry); ARGV limit, slot, lease seconds. A slot whose server
# died is forgotten when its lease runs out.
_ENTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 60)
return 1
"""


class RedisLimiter:
    """Limits shared by every cache server on one Redis (keys under `{prefix}:limits:`)."""

    def __init__(self, redis: Any, prefix: str, lease_s: float = 660.0) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:limits"
        self._lease_s = lease_s  # longer than any call may take (chat deadlines are 600 s)
        self._take = redis.register_script(_TAKE)
        self._enter = redis.register_script(_ENTER)

    async def _call(self, operation: Any) -> Any:
        try:
            return await operation
        except Exception as exc:  # redis errors: the store is unavailable, so are its limits
            raise StoreUnavailableError("the limits kept in Redis are unavailable") from exc

    async def take(self, client: str, rate_per_s: float, burst: int) -> float:
        key = f"{self._prefix}:rate:{client}"
        wait = await self._call(self._take(keys=[key], args=[rate_per_s, burst]))
        return float(wait)

    async def enter(self, client: str, limit: int, slot: str) -> bool:
        key = f"{self._prefix}:running:{client}"
        entered = await self._call(self._enter(keys=[key], args=[limit, slot, self._lease_s]))
        return bool(int(entered))

    async def leave(self, client: str, slot: str) -> None:
        await self._call(self._redis.zrem(f"{self._prefix}:running:{client}", slot))

    async def spent(self, tenant: str, day: str) -> tuple[int, int]:
        key = f"{self._prefix}:spent:{day}"
        requests, tokens = await self._call(
            self._redis.hmget(key, f"{tenant}:requests", f"{tenant}:tokens")
        )
        return int(requests or 0), int(tokens or 0)

    async def spend(self, tenant: str, day: str, requests: int, tokens: int) -> None:
        key = f"{self._prefix}:spent:{day}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, f"{tenant}:requests", requests)
            pipe.hincrby(key, f"{tenant}:tokens", tokens)
            pipe.expire(key, 3 * 86400)
            await self._call(pipe.execute())
