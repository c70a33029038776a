"""The shared store: Redis with vector search (RediSearch), for many cache-server replicas.

Per cache, under `{prefix}:{cache_id}:`:
- `e:{entry_id}` — a hash per entry (prompt, response, attributes, times, float32 vector);
  an entry with a TTL carries a Redis expiry (PEXPIRE), so Redis itself drops it;
- `idx` — a RediSearch index over those hashes: TAG fields for the exact-match key and the
  attributes, a VECTOR field (cosine). FLAT by default: exact, and a TAG-filtered FLAT search
  loses no neighbour (measured here: HNSW with a TAG filter lost 7-8% of true nearest
  neighbours, and HNSW's default EF_RUNTIME 10 lost recall even unfiltered);
- `lru` — a sorted set of entry ids by last use, for the size cap (evicted atomically by a Lua
  script, so replicas never over-evict);
- `exp` — a sorted set of entry ids by expiry time, so expirations are counted once;
- `stats` — a hash of counters (hits, misses, evictions, expirations) all replicas share.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from cache_server.entries import CacheEntry, normalize_prompt, prompt_key
from cache_server.store.base import (
    FloatArray,
    PurgeOutcome,
    PutOutcome,
    StoreConflictError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS[1] = lru zset; ARGV[1] = cap. Pops the least recently used beyond the cap, atomically.
_EVICT = """
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return {} end
return redis.call('ZPOPMIN', KEYS[1], excess)
"""

# KEYS[1] = set of caches, KEYS[2] = the cache's counters; ARGV[1] = cache id, then name/value
# pairs. Counts only for a cache that exists, so made-up cache ids leave nothing behind.
_ADD_COUNTERS = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""
_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    OSError,
)


def _tag(name: str, value: str) -> str:
    """Attribute pairs as hex tokens: nothing to escape in a RediSearch TAG query."""
    return hashlib.sha1(f"{name}\0{value}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class RedisAccess:
    """Credentials and TLS for reaching Redis, beside its URL.

    A password in the URL (redis://user:password@host) works too and wins over this one. TLS
    is chosen by the URL scheme (rediss://); the CA file checks Redis's certificate (without
    one, the system's CAs do), and a client certificate and key answer a Redis that demands
    them (`tls-auth-clients yes`)."""

    username: str | None = None
    password: str | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def check(self, url: str) -> None:
        """Raises ValueError for settings that cannot work together."""
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"redis_url {redacted_url(url)!r}: scheme must be redis, rediss or unix"
            )
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if any(f is not None for f in files) and scheme != "rediss":
            raise ValueError("Redis TLS files are set but redis_url is not rediss://")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("redis_tls_cert_file and redis_tls_key_file go together")

    def connection_options(self, url: str) -> dict[str, Any]:
        self.check(url)
        options: dict[str, Any] = {}
        if self.username is not None:
            options["username"] = self.username
        if self.password is not None:
            options["password"] = self.password
        if urlsplit(url).scheme == "rediss":
            options.update(
                ssl_cert_reqs="required",
                ssl_check_hostname=True,
                ssl_ca_certs=str(self.tls_ca_file) if self.tls_ca_file else None,
                ssl_certfile=str(self.tls_cert_file) if self.tls_cert_file else None,
                ssl_keyfile=str(self.tls_key_file) if self.tls_key_file else None,
            )
        return options


def redacted_url(url: str) -> str:
    """The URL with any password replaced by ***, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _filter(attributes: Mapping[str, str]) -> str:
    return " ".join(f"@atags:{{{_tag(k, v)}}}" for k, v in sorted(attributes.items()))


class RedisStore:
    backend = "redis"

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
        access = access or RedisAccess()
        self.url = redacted_url(url)  # for messages and logs: never the password
        self.prefix = prefix
        self._algorithm = algorithm
        self._hnsw_m = hnsw_m
        self._hnsw_ef_runtime = hnsw_ef_runtime
        # redis-py is only partly typed (untyped commands, str|bytes unions): kept as Any here.
        self._redis: Any = aioredis.from_url(
            url,
            protocol=2,  # FT.SEARCH replies as flat lists, the same on every redis-py version
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=10,
            **access.connection_options(url),
        )
        self._evict = self._redis.register_script(_EVICT)
        self._add_counters = self._redis.register_script(_ADD_COUNTERS)
        self._indexed: dict[str, int] = {}  # cache_id -> dimension, indexes known to exist

    def _key(self, cache_id: str, *parts: str) -> str:
        return ":".join((self.prefix, cache_id, *parts))

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Runs one Redis operation; a Redis that is loading its data set gets a few short
        retries, then any outage becomes StoreUnavailableError (UNAVAILABLE to callers)."""
        for attempt in range(4):
            try:
                return await operation()
            except redis_errors.BusyLoadingError as exc:
                if attempt == 3:
                    raise StoreUnavailableError(
                        f"Redis at {self.url} is loading its data set; retry shortly"
                    ) from exc
                await asyncio.sleep(0.1 * (attempt + 1))
            except redis_errors.AuthenticationError as exc:
                raise StoreUnavailableError(
                    f"Redis at {self.url} refused the credentials (redis_username / "
                    f"redis_password): {exc}"
                ) from exc
            except _UNAVAILABLE as exc:
                raise StoreUnavailableError(f"Redis at {self.url} is unreachable: {exc}") from exc
        raise AssertionError("unreachable")

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._call(self._redis.ping)
        except StoreUnavailableError as exc:
            log.warning("%s; the cache server will keep trying", exc)
            return
        modules = await self._call(lambda: self._redis.execute_command("MODULE", "LIST"))
        names = {m[1].decode() if isinstance(m, list) else str(m) for m in modules}
        if not any("search" in n.lower() for n in names):
            raise StoreConflictError(f"Redis at {self.url} has no search module (RediSearch)")

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), timeout=1.0))
        except (TimeoutError, *_UNAVAILABLE):
            return False

    async def close(self) -> None:
        await self._redis.aclose()

    async def _ensure_index(self, cache_id: str, dimension: int) -> None:
        if self._indexed.get(cache_id) == dimension:
            return
        index = self._key(cache_id, "idx")
        if self._algorithm == "FLAT":
            vector = [
                "FLAT",
                "6",
                "TYPE",
                "FLOAT32",
                "DIM",
                str(dimension),
                "DISTANCE_METRIC",
                "COSINE",
            ]
        else:
            vector = [
                "HNSW",
                "10",
                "TYPE",
                "FLOAT32",
                "DIM",
                str(dimension),
                "DISTANCE_METRIC",
                "COSINE",
                "M",
                str(self._hnsw_m),
                "EF_RUNTIME",
                str(self._hnsw_ef_runtime),
            ]
        try:
            await self._call(
                lambda: self._redis.execute_command(
                    "FT.CREATE",
                    index,
                    "ON",
                    "HASH",
                    "PREFIX",
                    "1",
                    self._key(cache_id, "e", ""),
                    "SCHEMA",
                    "pkey",
                    "TAG",
                    "atags",
                    "TAG",
                    "SEPARATOR",
                    ",",
                    "created_at",
                    "NUMERIC",
                    "SORTABLE",
                    "vector",
                    "VECTOR",
                    *vector,
                )
            )
        except redis_errors.ResponseError as exc:
            if "already exists" not in str(exc).lower():
                raise
            info = await self._call(lambda: self._redis.execute_command("FT.INFO", index))
            existing = _index_dimension(info)
            if existing is not None and existing != dimension:
                raise StoreConflictError(
                    f"cache {cache_id!r} holds {existing}-dim vectors; got {dimension} (the "
                    "embedding model changed: flush the cache)"
                ) from exc
        self._indexed[cache_id] = dimension

    # -- writes ---------------------------------------------------------------------------

    async def put(
        self, entry: CacheEntry, vector: FloatArray, max_entries: int, now: float
    ) -> PutOutcome:
        vector = np.ascontiguousarray(vector, dtype="<f4")
        await self._ensure_index(entry.cache_id, vector.shape[0])
        key = self._key(entry.cache_id, "e", entry.id)
        lru, exp = self._key(entry.cache_id, "lru"), self._key(entry.cache_id, "exp")
        fields: dict[str, Any] = {
            "id": entry.id,
            "prompt": entry.prompt,
            "pkey": prompt_key(entry.prompt),
            "response": entry.response,
            "attributes": json.dumps(dict(entry.attributes), ensure_ascii=False),
            "atags": ",".join(_tag(k, v) for k, v in entry.attributes.items()),
            "created_at": entry.created_at,
            "expires_at": entry.expires_at if entry.expires_at is not None else "",
            "vector": vector.tobytes(),
        }

        async def write() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)  # a replaced entry loses attributes it no longer has
                pipe.hset(key, mapping=fields)
                if entry.expires_at is not None:
                    # Relative to the caller's clock, so Redis and the cache agree on "now".
                    pipe.pexpire(key, max(1, int((entry.expires_at - now) * 1000)))
                    pipe.zadd(exp, {entry.id: entry.expires_at})
                else:
                    pipe.zrem(exp, entry.id)
                pipe.zadd(lru, {entry.id: now})
                pipe.sadd(self._key("_caches"), entry.cache_id)
                return list(await pipe.execute())

        await self._call(write)
        popped = await self._call(lambda: self._evict(keys=[lru], args=[max_entries]))
        evicted = [member.decode() for member in popped[::2]]
        if evicted:
            await self._call(lambda: self._drop(entry.cache_id, evicted, counter="evictions"))
        return PutOutcome(evicted=len(evicted))

    async def _drop(self, cache_id: str, entry_ids: list[str], counter: str | None) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry_id in entry_ids:
                pipe.delete(self._key(cache_id, "e", entry_id))
            pipe.zrem(self._key(cache_id, "lru"), *entry_ids)
            pipe.zrem(self._key(cache_id, "exp"), *entry_ids)
            if counter is not None:
                pipe.hincrby(self._key(cache_id, "stats"), counter, len(entry_ids))
            results = await pipe.execute()
        return int(sum(results[: len(entry_ids)]))

    async def touch(self, cache_id: str, entry_id: str, now: float) -> None:
        lru = self._key(cache_id, "lru")
        await self._call(lambda: self._redis.zadd(lru, {entry_id: now}, xx=True))

    async def delete(self, cache_id: str, entry_id: str) -> bool:
        return await self._call(lambda: self._drop(cache_id, [entry_id], counter=None)) > 0

    async def delete_matching(self, cache_id: str, attributes: Mapping[str, str]) -> int:
        deleted = 0
        while True:
            ids = await self._query_ids(cache_id, _filter(attributes) or "*", 1000)
            if not ids:
                return deleted
            deleted += await self._call(partial(self._drop, cache_id, ids, None))

    async def flush(self, cache_id: str) -> int:
        lru = self._key(cache_id, "lru")
        count = int(await self._call(lambda: self._redis.zcard(lru)))
        deleted = await self.delete_matching(cache_id, {})
        await self._call(lambda: self._redis.delete(lru, self._key(cache_id, "exp")))
        await self._call(lambda: self._redis.srem(self._key("_caches"), cache_id))
        return max(count, deleted)

    async def purge_expired(self, now: float) -> PurgeOutcome:
        caches = await self._call(lambda: self._redis.smembers(self._key("_caches")))
        expired: dict[str, int] = {}
        for raw in caches:
            cache_id = raw.decode()
            exp = self._key(cache_id, "exp")
            ids = [
                i.decode()
                for i in await self._call(partial(self._redis.zrangebyscore, exp, "-inf", now))
            ]
            if not ids:
                continue
            # ZREM tells which ids this replica removed first: each expiry is counted once.
            removed = 0
            for entry_id in ids:
                if await self._call(partial(self._redis.zrem, exp, entry_id)):
                    removed += 1
                    await self._call(partial(self._drop, cache_id, [entry_id], None))
            if removed:
                stats = self._key(cache_id, "stats")
                await self._call(partial(self._redis.hincrby, stats, "expirations", removed))
                expired[cache_id] = removed
        return PurgeOutcome(expired=expired)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, cache_id: str, entry_id: str, now: float) -> CacheEntry | None:
        key = self._key(cache_id, "e", entry_id)
        raw = await self._call(lambda: self._redis.hgetall(key))
        return _entry(cache_id, raw, now) if raw else None

    async def _query_ids(self, cache_id: str, query: str, limit: int) -> list[str]:
        if cache_id not in self._indexed and not await self._index_exists(cache_id):
            return []
        reply = await self._call(
            lambda: self._redis.execute_command(
                "FT.SEARCH",
                self._key(cache_id, "idx"),
                query,
                "NOCONTENT",
                "LIMIT",
                "0",
                str(limit),
                "DIALECT",
                "2",
            )
        )
        prefix = len(self._key(cache_id, "e", ""))
        return [k.decode()[prefix:] for k in reply[1:]]

    def vector_dimension(self, cache_id: str) -> int | None:
        return self._indexed.get(cache_id)

    async def _index_exists(self, cache_id: str) -> bool:
        try:
            info = await self._call(
                lambda: self._redis.execute_command("FT.INFO", self._key(cache_id, "idx"))
            )
        except redis_errors.ResponseError:
            return False
        dimension = _index_dimension(info)
        if dimension is not None:
            self._indexed[cache_id] = dimension
        return True

    async def find_exact(
        self, cache_id: str, prompt: str, attributes: Mapping[str, str], now: float
    ) -> CacheEntry | None:
        query = f"@pkey:{{{prompt_key(prompt)}}} {_filter(attributes)}".strip()
        ids = await self._query_ids(cache_id, query, 20)
        wanted = normalize_prompt(prompt)
        best: CacheEntry | None = None
        for entry_id in ids:
            entry = await self.get(cache_id, entry_id, now)
            if (
                entry is not None
                and normalize_prompt(entry.prompt) == wanted
                and (best is None or entry.created_at > best.created_at)
            ):
                best = entry
        return best

    async def search(
        self,
        cache_id: str,
        vector: FloatArray,
        k: int,
        min_similarity: float,
        attributes: Mapping[str, str],
        now: float,
    ) -> list[tuple[CacheEntry, float]]:
        if cache_id not in self._indexed and not await self._index_exists(cache_id):
            return []
        if self._indexed.get(cache_id) != vector.shape[0]:
            return []
        scope = _filter(attributes) or "*"
        wanted = k + 4  # room for entries that expired but are still indexed
        query = f"({scope})=>[KNN {wanted} @vector $vec AS distance]"
        blob = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        reply = await self._call(
            lambda: self._redis.execute_command(
                "FT.SEARCH",
                self._key(cache_id, "idx"),
                query,
                "PARAMS",
                "2",
                "vec",
                blob,
                "SORTBY",
                "distance",
                "RETURN",
                "7",
                "distance",
                "prompt",
                "response",
                "attributes",
                "created_at",
                "expires_at",
                "id",
                "LIMIT",
                "0",
                str(wanted),
                "DIALECT",
                "2",
            )
        )
        out: list[tuple[CacheEntry, float]] = []
        for i in range(1, len(reply), 2):
            raw = dict(zip(reply[i + 1][::2], reply[i + 1][1::2], strict=True))
            similarity = 1.0 - float(raw[b"distance"])
            if similarity < min_similarity:
                break
            entry = _entry(cache_id, raw, now)
            if entry is not None:
                out.append((entry, similarity))
            if len(out) == k:
                break
        return out

    async def count(self, cache_id: str, now: float) -> int:
        lru, exp = self._key(cache_id, "lru"), self._key(cache_id, "exp")
        size = await self._call(lambda: self._redis.zcard(lru))
        expired = await self._call(lambda: self._redis.zcount(exp, "-inf", now))
        return int(size) - int(expired)

    # -- counters (shared by every replica) -------------------------------------------------

    async def admits(self, cache_id: str, max_caches: int) -> bool:
        caches = self._key("_caches")

        async def ask() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sismember(caches, cache_id)
                pipe.scard(caches)
                return list(await pipe.execute())

        member, count = await self._call(ask)
        return bool(member) or int(count) < max_caches

    async def add_counters(self, cache_id: str, counts: Mapping[str, int]) -> None:
        keys = [self._key("_caches"), self._key(cache_id, "stats")]
        args: list[Any] = [cache_id]
        for name, value in counts.items():
            args += [name, value]
        await self._call(lambda: self._add_counters(keys=keys, args=args))

    async def counters(self, cache_id: str) -> dict[str, int]:
        raw = await self._call(lambda: self._redis.hgetall(self._key(cache_id, "stats")))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def reset_counters(self, cache_id: str) -> None:
        await self._call(lambda: self._redis.delete(self._key(cache_id, "stats")))


def _entry(cache_id: str, raw: Mapping[bytes, bytes], now: float) -> CacheEntry | None:
    expires = raw.get(b"expires_at", b"")
    expires_at = float(expires) if expires else None
    if expires_at is not None and expires_at <= now:
        return None
    return CacheEntry(
        cache_id=cache_id,
        id=raw[b"id"].decode(),
        prompt=raw[b"prompt"].decode(),
        response=raw[b"response"].decode(),
        attributes=json.loads(raw[b"attributes"]),
        created_at=float(raw[b"created_at"]),
        expires_at=expires_at,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, Any]:
    """A RESP2 flat [key, value, key, value, ...] list as a dict with str keys."""
    return {_text(flat[i]).lower(): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _index_dimension(info: list[Any]) -> int | None:
    """The dimension of the VECTOR attribute in an FT.INFO reply (RESP2), if there is one.

    FT.INFO lists each attribute as a flat key/value list (identifier, type, ..., and for a
    vector field its algorithm, data type and `dim`)."""
    for attribute in _pairs(info).get("attributes") or []:
        if not isinstance(attribute, list):
            continue
        fields = _pairs(attribute)
        if _text(fields.get("type", "")).upper() == "VECTOR" and "dim" in fields:
            return int(_text(fields["dim"]))
    return None
