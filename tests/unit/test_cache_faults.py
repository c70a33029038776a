"""SemanticCache when things go wrong around it: a store that cannot count, callers that
overlap with different wishes (fake embedder and upstream, the real embedded store)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from cache_server.store.base import StoreConflictError, StoreUnavailableError
from tests.unit.fakes import DIM, Parts


async def test_an_answer_is_not_lost_because_its_hit_or_miss_could_not_be_counted(
    parts: Parts,
) -> None:
    cache, _, upstream, _ = parts

    async def no_counting(cache_id: str, counts: Mapping[str, int]) -> bool:
        raise StoreUnavailableError("Redis is unreachable (counters)")

    cache.store.add_counters = no_counting  # type: ignore[method-assign]
    miss = await cache.query("", "How do I learn Python?")
    assert miss.hit is None and miss.response == "LLM says: How do I learn Python?"
    hit = await cache.query("", "What is the best way to learn Python?")
    assert hit.hit is not None and hit.response == miss.response
    found = await cache.search("", "How do I learn Python?")
    assert found.hits and len(upstream.calls) == 1


async def test_a_caller_with_another_ttl_does_not_join_a_flight_storing_with_this_one(
    parts: Parts,
) -> None:
    cache, _, upstream, _ = parts
    upstream.delay_s = 0.1
    forever, brief = await asyncio.gather(
        cache.query("", "How do I cook rice?"),
        cache.query("", "How do I cook rice?", ttl_s=5),
    )
    assert forever.hit is None and brief.hit is None
    assert len(upstream.calls) == 2  # each stored with its own TTL
    # Same TTL: one flight, one call.
    await asyncio.gather(*(cache.query("", "What is rice?", ttl_s=5) for _ in range(3)))
    assert len(upstream.calls) == 3


async def test_vectors_the_cache_cannot_hold_are_refused_before_the_llm_is_paid(
    parts: Parts,
) -> None:
    """The model changed (another dimension) while the cache holds the old vectors: the miss
    is refused before the upstream is asked, not after its answer could not be stored."""
    cache, embedder, upstream, _ = parts
    await cache.query("", "How do I learn Python?")
    assert len(upstream.calls) == 1
    embedder.dimension = DIM * 2  # the embedder now serves another model
    with pytest.raises(StoreConflictError, match="dim"):
        await cache.query("", "How do I cook rice?")
    assert len(upstream.calls) == 1
