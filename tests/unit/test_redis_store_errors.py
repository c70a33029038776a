"""RedisStore's handling of an unavailable or loading Redis (no server needed: the failures
are raised by the operation itself)."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from cache_server.store.base import StoreFullError, StoreUnavailableError
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


async def test_a_read_only_replica_after_a_failover_is_unavailable() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")

    async def read_only() -> str:
        raise redis_errors.ReadOnlyError("You can't write against a read only replica.")

    with pytest.raises(StoreUnavailableError, match="read-only replica") as info:
        await store._call(read_only)
    assert "retry" in str(info.value)
    await store.close()


async def test_a_redis_out_of_memory_is_store_full() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")

    async def full() -> str:
        raise redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

    with pytest.raises(StoreFullError, match="maxmemory"):
        await store._call(full)
    await store.close()


async def test_a_redis_that_cannot_persist_is_unavailable() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")

    async def misconf() -> str:
        raise redis_errors.ResponseError(
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
            "persist to disk. Commands that may modify the data set are disabled."
        )

    with pytest.raises(StoreUnavailableError, match="cannot persist"):
        await store._call(misconf)
    await store.close()


async def test_other_redis_errors_stay_errors() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")

    async def wrong() -> str:
        raise redis_errors.ResponseError("WRONGTYPE Operation against a key")

    with pytest.raises(redis_errors.ResponseError):
        await store._call(wrong)
    await store.close()


def test_store_errors_become_their_grpc_status() -> None:
    import grpc

    from cache_server.statuses import status_of

    assert status_of(StoreFullError("full"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_of(StoreUnavailableError("down"))[0] == grpc.StatusCode.UNAVAILABLE
    assert status_of(RuntimeError("a bug"))[0] == grpc.StatusCode.INTERNAL


def test_a_document_deleted_during_a_search_is_skipped_not_a_crash() -> None:
    """RediSearch returns a document that was deleted between the index match and the loading
    of its fields with no field list (None); found by the concurrency test as INTERNAL."""
    from cache_server.store.redis_queries import _documents

    reply = [2, b"k1", [b"prompt", b"p1", b"id", b"1"], b"k2", None]
    assert _documents(reply) == [{b"prompt": b"p1", b"id": b"1"}]
