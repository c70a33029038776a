"""SemcacheCache: LangChain's cache interface on semcache, so that
`set_llm_cache(SemcacheCache(...))` gives any LangChain model semantic caching."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.outputs import Generation

from semcache_client.async_cache_client import AsyncCacheClient
from semcache_client.cache_client import CacheClient
from semcache_client.config import ClientConfig, RetryPolicy, Timeouts, TlsConfig
from semcache_client.errors import SemcacheError
from semcache_client.langchain.generations import decode, encode
from semcache_client.langchain.prompts import (
    MARKER_ATTRIBUTE,
    MARKER_VALUE,
    CacheKey,
    cache_key,
    llm_attribute,
)
from semcache_client.models import SearchResult, SearchStrategy

log = logging.getLogger("semcache_client.langchain")

_STRATEGIES = (SearchStrategy.EXACT, SearchStrategy.SEMANTIC)


class SemcacheCache(BaseCache):
    """A LangChain cache served by semcache's cache server (semcache_client.langchain.prompts
    says what is compared by meaning and what scopes an entry).

    `cache_id` is the semcache cache the entries live in ("langchain" by default, apart from
    the REST API's "default"); `attributes` are added to every entry and look-up (e.g. a
    tenant); `similarity_threshold` (cosine, higher is stricter; None: the server's) decides a
    hit; `ttl_seconds` (None: the server's) bounds an entry's life. The client options are
    those of CacheClient.

    A cache that fails must not take the application down: with `raise_errors=False` (the
    default) a failed look-up is logged and answered as a miss, and a failed store is logged.
    """

    def __init__(
        self,
        addresses: str | Sequence[str] = "localhost:50051",
        *,
        cache_id: str = "langchain",
        similarity_threshold: float | None = None,
        ttl_seconds: float | None = None,
        attributes: Mapping[str, str] | None = None,
        tls: TlsConfig | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        raise_errors: bool = False,
    ) -> None:
        self.config = ClientConfig.build(
            addresses, tls=tls, timeouts=timeouts, retry=retry, metadata=metadata
        )
        self.cache_id = cache_id
        self.similarity_threshold = similarity_threshold
        self.ttl_seconds = ttl_seconds
        self.attributes = {**(attributes or {}), MARKER_ATTRIBUTE: MARKER_VALUE}
        self.raise_errors = raise_errors
        self._client: CacheClient | None = None
        self._lock = threading.Lock()
        # grpc.aio channels belong to the event loop that made them: one client per loop,
        # dropped once its loop is closed (each `asyncio.run` makes and closes a loop of its
        # own; a client keeps its loop alive, so a weak key alone never lets either go).
        self._async_clients: dict[asyncio.AbstractEventLoop, AsyncCacheClient] = {}

    def _sync(self) -> CacheClient:
        with self._lock:
            if self._client is None:
                self._client = CacheClient(config=self.config, cache_id=self.cache_id)
            return self._client

    def _async(self) -> AsyncCacheClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            for closed in [other for other in self._async_clients if other.is_closed()]:
                del self._async_clients[closed]  # its channel cannot be closed any more
            client = self._async_clients.get(loop)
            if client is None:
                client = AsyncCacheClient(config=self.config, cache_id=self.cache_id)
                self._async_clients[loop] = client
        return client

    def _scope(self, key: CacheKey) -> dict[str, str]:
        return {**self.attributes, **key.attributes}

    def _clear_attributes(self, kwargs: Mapping[str, Any]) -> dict[str, str]:
        unknown = set(kwargs) - {"llm_string"}
        if unknown:
            raise TypeError(f"clear() takes only llm_string=, not {', '.join(sorted(unknown))}")
        llm_string = kwargs.get("llm_string")
        return {**self.attributes, **(llm_attribute(llm_string) if llm_string else {})}

    def _failed(self, what: str, error: SemcacheError) -> None:
        if self.raise_errors:
            raise error
        log.warning("semcache %s failed, going on without the cache: %s", what, error)

    @staticmethod
    def _answer(result: SearchResult) -> list[Generation] | None:
        hit = result.best
        return decode(hit.entry.response) if hit is not None else None

    @staticmethod
    def _payload(return_val: RETURN_VAL_TYPE) -> str | None:
        try:
            return encode(return_val)
        except (TypeError, ValueError) as exc:
            log.warning("not cached: the generations cannot be stored as JSON (%s)", exc)
            return None

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        key = cache_key(prompt, llm_string)
        if key is None:
            return None
        try:
            result = self._sync().search(
                key.text,
                attributes=self._scope(key),
                similarity_threshold=self.similarity_threshold,
                strategies=_STRATEGIES,
            )
        except SemcacheError as error:
            self._failed("look-up", error)
            return None
        return self._answer(result)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key = cache_key(prompt, llm_string)
        payload = self._payload(return_val) if key is not None else None
        if key is None or payload is None:
            return
        try:
            self._sync().set(
                key.text, payload, attributes=self._scope(key), ttl_seconds=self.ttl_seconds
            )
        except SemcacheError as error:
            self._failed("store", error)

    def clear(self, **kwargs: Any) -> None:
        """Deletes the entries this cache stored (only those of one model and parameter set
        with `clear(llm_string=...)`); other entries of the same semcache cache stay."""
        self._sync().delete_entries(self._clear_attributes(kwargs))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        key = cache_key(prompt, llm_string)
        if key is None:
            return None
        try:
            result = await self._async().search(
                key.text,
                attributes=self._scope(key),
                similarity_threshold=self.similarity_threshold,
                strategies=_STRATEGIES,
            )
        except SemcacheError as error:
            self._failed("look-up", error)
            return None
        return self._answer(result)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key = cache_key(prompt, llm_string)
        payload = self._payload(return_val) if key is not None else None
        if key is None or payload is None:
            return
        try:
            await self._async().set(
                key.text, payload, attributes=self._scope(key), ttl_seconds=self.ttl_seconds
            )
        except SemcacheError as error:
            self._failed("store", error)

    async def aclear(self, **kwargs: Any) -> None:
        await self._async().delete_entries(self._clear_attributes(kwargs))

    def close(self) -> None:
        """Closes the blocking client (the async ones: aclose, in their event loop)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Closes this event loop's client."""
        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()
