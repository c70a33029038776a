"""RedisStore's handling of an unavailable or loading Redis (no server needed: the failures
are raised by the operation itself)."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from cache_server.store.base import StoreUnavailableError
from cache_server.store.redis_store import RedisStore


async def test_a_loading_redis_is_retried_then_answers() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")
    calls = 0

    async def loading_twice() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise redis_errors.BusyLoadingError("LOADING Redis is loading the dataset in memory")
        return "ok"

    assert await store._call(loading_twice) == "ok"
    assert calls == 3
    await store.close()


async def test_a_redis_that_stays_loading_is_unavailable_with_a_clear_message() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")

    async def always_loading() -> str:
        raise redis_errors.BusyLoadingError("LOADING")

    with pytest.raises(StoreUnavailableError, match="loading its data set"):
        await store._call(always_loading)
    await store.close()


async def test_an_unreachable_redis_is_unavailable() -> None:
    store = RedisStore("redis://127.0.0.1:1/0", timeout_s=0.5)
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        await store.count("c1", 0.0)
    await store.close()
