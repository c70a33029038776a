"""A call that reaches the cache server while its embedded store is still opening (the server
listens before it is ready) finds the store unavailable, which every caller handles (the chat
route passes the request through, a look-up answers UNAVAILABLE): not an internal error. CI
found the chat route answering INTERNAL there, from a model table read before open()."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cache_server.store.base import StoreUnavailableError
from cache_server.store.embedded import EmbeddedStore


def test_a_store_not_yet_open_is_unavailable_not_broken(tmp_path: Path) -> None:
    async def run() -> None:
        store = EmbeddedStore(tmp_path)
        with pytest.raises(StoreUnavailableError):
            await store.vector_model("default")
        with pytest.raises(StoreUnavailableError):
            await store.check_dimension("default", 4, "model-a")
        with pytest.raises(StoreUnavailableError):
            _ = store.db
        await store.open()
        assert await store.vector_model("default") is None
        await store.check_dimension("default", 4, "model-a")
        assert await store.count("default", 0.0) == 0
        await store.close()

    asyncio.run(run())
