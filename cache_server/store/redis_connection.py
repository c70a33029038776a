"""The connection RedisStore runs every command through: one client, Redis's failures as
the store's errors (unavailable, full), and the checks made once at start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from cache_server.store.base import StoreConflictError, StoreFullError, StoreUnavailableError
from cache_server.store.redis_access import RedisAccess, redacted_url
from cache_server.store.redis_layout import VERSION, KeyLayout

log = logging.getLogger(__name__)
T = TypeVar("T")

_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    OSError,
)


class RedisConnection:
    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_s: float,
        access: RedisAccess | None,
    ) -> None:
        access = access or RedisAccess()
        self.url = redacted_url(url)  # for messages and logs: never the password
        self.prefix = prefix
        self.layout = KeyLayout(prefix)
        self.timeout_s = timeout_s
        # redis-py is only partly typed (untyped commands, str|bytes unions): kept as Any here.
        self._redis: Any = aioredis.from_url(
            url,
            protocol=2,  # FT.SEARCH replies as flat lists, the same on every redis-py version
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=10,
            **access.connection_options(url),
        )

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Runs one Redis operation. A Redis that is loading its data set gets a few short
        retries; an outage, a read-only replica (failover) or a Redis that cannot persist
        becomes StoreUnavailableError (UNAVAILABLE, retryable), a full one StoreFullError."""
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
            except (redis_errors.ReadOnlyError, redis_errors.MasterDownError) as exc:
                raise StoreUnavailableError(
                    f"Redis at {self.url} is a read-only replica now (a failover under way?): "
                    f"it takes no writes; retry shortly ({exc})"
                ) from exc
            except redis_errors.OutOfMemoryError as exc:
                raise StoreFullError(
                    f"Redis at {self.url} is out of memory (maxmemory reached) and takes no "
                    "new entries: flush caches no longer used, lower max_cache_size or raise "
                    f"Redis's maxmemory ({exc})"
                ) from exc
            except redis_errors.ResponseError as exc:
                if str(exc).startswith("MISCONF"):
                    raise StoreUnavailableError(
                        f"Redis at {self.url} cannot persist to disk, so it refuses writes "
                        f"(MISCONF); retry once its disk is fixed ({exc})"
                    ) from exc
                raise
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
        await self._warn_of_legacy_layout()

    async def _warn_of_legacy_layout(self) -> None:
        registry = self.layout.legacy_registry
        old_caches = await self._call(lambda: self._redis.exists(registry))
        names = await self._call(lambda: self._redis.execute_command("FT._LIST"))
        old_indexes = [n.decode() for n in names if self.layout.is_legacy_index(n.decode())]
        if old_caches or old_indexes:
            log.warning(
                "Redis at %s holds data under an older key layout (prefix %r: %d indexes%s). "
                "This version keeps its data under %r (layout %s) and does not read it: those "
                "entries are invisible and the caches start empty. Once they are no longer "
                "wanted, drop the old indexes with FT.DROPINDEX <name> DD and delete %r.",
                self.url,
                self.prefix,
                len(old_indexes),
                f", and the set {registry!r}" if old_caches else "",
                self.layout.base,
                VERSION,
                registry,
            )

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), timeout=1.0))
        except (TimeoutError, *_UNAVAILABLE):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
