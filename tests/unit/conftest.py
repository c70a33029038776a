"""Unit-test fixtures: a SemanticCache over the real embedded store in a temp folder, with
the fakes of tests.unit.fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cache_server.cache import CachePolicy, SemanticCache
from cache_server.store.embedded import EmbeddedStore
from tests.unit.fakes import Clock, FakeEmbedder, FakeUpstream, Parts


@pytest.fixture()
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = EmbeddedStore(tmp_path)
    await store.open()
    embedder, upstream, clock = FakeEmbedder(), FakeUpstream(), Clock()
    cache = SemanticCache(store, embedder, upstream, CachePolicy(max_cache_size=3), clock)
    yield cache, embedder, upstream, clock
    await store.close()
