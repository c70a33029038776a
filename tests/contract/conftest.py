"""Fixtures of the store contract tests: one Redis per session, a fresh store per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cache_server.store.base import CacheStore
from tests.contract import stores
from tests.processes import RedisProcess


@pytest.fixture(scope="session", autouse=True)
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("contract-redis")).start()
    stores._REDIS.append(server)
    yield server
    server.stop()
    stores._REDIS.clear()


@pytest.fixture(params=sorted(stores.BACKENDS))
async def factory(request: pytest.FixtureRequest, tmp_path: Path) -> stores.StoreFactory:
    return await stores.BACKENDS[request.param](tmp_path)


@pytest.fixture()
async def store(factory: stores.StoreFactory) -> AsyncIterator[CacheStore]:
    s = await factory()
    yield s
    await s.close()
