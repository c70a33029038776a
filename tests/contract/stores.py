"""What the store contract tests share: the backends, one Redis per session, and small
builders of entries and vectors."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from cache_server.entries import CacheEntry, entry_id
from cache_server.store.base import CacheStore, PutOutcome
from cache_server.store.embedded import EmbeddedStore
from cache_server.store.redis_store import RedisStore
from tests.processes import RedisProcess

NOW = 1_700_000_000.0
DIM = 8
StoreFactory = Callable[[], Awaitable[CacheStore]]

# Cache ids that break naive key and prefix designs: separators, glob and hash-tag
# characters, spaces, unicode, one id a prefix of another, a very long one.
ADVERSARIAL_CACHE_IDS = [
    "a",
    "a:e",
    "a:e:x",
    "a:e:*",
    "a*",
    "*",
    "a:idx",
    "a:lru",
    "{a}",
    "a}{b",
    "a b",
    " ",
    "ünï:cødé ☃",
    "x" * 1000,
]


def vec(*values: float, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def entry(
    prompt: str,
    cache_id: str = "c1",
    ttl: float | None = None,
    created: float = NOW,
    **attributes: str,
) -> CacheEntry:
    return CacheEntry(
        cache_id=cache_id,
        id=entry_id(cache_id, prompt, attributes),
        prompt=prompt,
        response=f"answer to {prompt}",
        attributes=attributes,
        created_at=created,
        expires_at=created + ttl if ttl else None,
    )


_REDIS: list[RedisProcess] = []
_namespaces = itertools.count()


def redis_server() -> RedisProcess:
    assert _REDIS, "the contract tests' redis_server fixture starts it"
    return _REDIS[0]


def fresh_prefix() -> str:
    return f"contract{next(_namespaces)}-{uuid.uuid4().hex[:8]}"


async def embedded_factory(tmp_path: Path) -> StoreFactory:
    async def make() -> CacheStore:
        store = EmbeddedStore(tmp_path / "data")
        await store.open()
        return store

    return make


async def redis_factory(tmp_path: Path) -> StoreFactory:
    # One Redis for the whole session; each factory has its own key prefix (and indexes), and
    # every store it makes shares it (replicas, or a reopen).
    prefix = fresh_prefix()

    async def make() -> CacheStore:
        store = RedisStore(redis_server().url, prefix=prefix)
        await store.open()
        return store

    return make


BACKENDS = {"embedded": embedded_factory, "redis": redis_factory}


async def put(
    store: CacheStore,
    e: CacheEntry,
    vector: np.ndarray,
    max_entries: int = 10,
    now: float = NOW,
    max_caches: int = 1000,
) -> PutOutcome:
    return await store.put(e, vector, max_entries, now, max_caches=max_caches)
