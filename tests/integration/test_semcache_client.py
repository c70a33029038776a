"""semcache-client against a real embedder and cache server: every method of both services,
blocking and asyncio, with typed results and typed errors."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from semcache_client import (
    AsyncCacheClient,
    AsyncEmbedderClient,
    CacheClient,
    EmbedderClient,
    ErrorReason,
    FailedPrecondition,
    HitPolicy,
    InvalidArgument,
    NotFound,
    SearchStrategy,
)
from tests.fake_llm import FakeLLM
from tests.processes import ServiceProcess

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"


def new_cache() -> str:
    return f"client-{uuid.uuid4().hex[:12]}"


def test_every_cache_method_blocking(cache_server: ServiceProcess, llm: FakeLLM) -> None:
    with CacheClient(cache_server.address, cache_id=new_cache()) as cache:
        info = cache.get_server_info()
        assert info.embedding_dimension == 384 and info.store_backend == "embedded"
        assert info.upstream == "openai-compatible" and info.embedder_serving

        calls = llm.calls
        miss = cache.query(QUESTION)
        assert not miss.cache_hit and miss.cached_data is None
        assert miss.response == f"LLM answer to: {QUESTION}" and len(miss.entry_id) == 32
        hit = cache.query(PARAPHRASE)
        assert hit.cache_hit and hit.response == miss.response and llm.calls == calls + 1
        assert hit.cached_data is not None and hit.cached_data.cached_query == QUESTION
        assert 0.85 <= hit.cached_data.similarity_score < 1.0
        assert hit.cached_data.strategy is SearchStrategy.SEMANTIC
        assert hit.embedding_dimension == 384 and hit.policy == "threshold"

        entry_id = cache.set(
            "How do rainbows form?", "Sunlight refracts in drops.", attributes={"topic": "sky"}
        )
        found = cache.search("How are rainbows formed?", attributes={"topic": "sky"})
        assert found.best is not None and found.best.entry.id == entry_id
        assert found.best.entry.attributes == {"topic": "sky"}
        assert found.best.entry.expires_at is None
        assert found.best.entry.created_at > time.time() - 60
        assert cache.search("How are rainbows formed?", attributes={"topic": "sea"}).hits == []
        exact = cache.search(
            "How do rainbows form?",
            attributes={"topic": "sky"},
            strategies=[SearchStrategy.EXACT, SearchStrategy.SEMANTIC],
        )
        assert exact.hits[0].strategy is SearchStrategy.EXACT and exact.hits[0].similarity == 1.0
        expiring = cache.set("Temporary?", "yes", ttl_seconds=600)
        (entry,) = cache.search("Temporary?", max_results=5, similarity_threshold=0.99).hits
        assert entry.entry.id == expiring and entry.entry.expires_at is not None

        feedback = cache.submit_feedback(hit.entry_id, PARAPHRASE, correct=False)
        assert feedback.entry_prompt == QUESTION and not feedback.served_for_prompt

        stats = cache.get_stats()
        assert stats.cache_size == 3 and stats.hits >= 1 and stats.misses >= 1
        assert stats.reported_wrong == 1 and stats.cache_id == cache.cache_id

        assert cache.get_cache_policy().source == "server"
        policy = cache.set_cache_policy(HitPolicy.VERIFIED, max_error_rate=0.1)
        assert (policy.policy, policy.max_error_rate, policy.source) == ("verified", 0.1, "cache")
        assert cache.get_cache_policy().policy == "verified"
        assert cache.set_cache_policy(None).source == "server"

        cache.delete(expiring)
        with pytest.raises(NotFound) as gone:
            cache.delete(expiring)
        assert gone.value.reason is ErrorReason.NOT_FOUND
        assert cache.delete_entries({"topic": "sky"}) == 1
        assert cache.flush() == 1
        assert cache.get_stats().cache_size == 0


async def test_every_cache_method_asyncio(cache_server: ServiceProcess, llm: FakeLLM) -> None:
    async with AsyncCacheClient(cache_server.address, cache_id=new_cache()) as cache:
        assert (await cache.get_server_info()).embedding_dimension == 384
        miss = await cache.query(QUESTION)
        hits = await asyncio.gather(*(cache.query(PARAPHRASE) for _ in range(4)))
        assert not miss.cache_hit and all(h.cache_hit for h in hits)
        entry_id = await cache.set("How do rainbows form?", "Refraction.", attributes={"t": "a"})
        found = await cache.search("How are rainbows formed?", attributes={"t": "a"})
        assert found.best is not None and found.best.entry.id == entry_id
        feedback = await cache.submit_feedback(entry_id, "How are rainbows formed?", True)
        assert feedback.served_for_prompt and feedback.correct
        stats = await cache.get_stats()
        assert stats.cache_size == 2 and stats.hits == 5 and stats.reported_right == 1
        assert (await cache.set_cache_policy(HitPolicy.THRESHOLD)).policy == "threshold"
        assert (await cache.get_cache_policy()).source == "cache"
        await cache.delete(entry_id)
        with pytest.raises(NotFound):
            await cache.delete(entry_id)
        assert await cache.delete_entries({"t": "a"}) == 0
        assert await cache.flush() == 1
        with pytest.raises(InvalidArgument) as refused:
            await cache.search("x", max_results=1000)
        assert refused.value.reason is ErrorReason.INVALID_INPUT


def test_embedder_methods_blocking(embedder_process: str) -> None:
    with EmbedderClient(embedder_process) as embedder:
        result = embedder.embed(["semantic caching", "a cache that understands meaning", "cats"])
        assert (result.count, result.dimension) == (3, 384)
        assert len(result.raw) == 3 * 384 * 4 and len(result.token_counts) == 3
        a, b, c = result.vectors
        assert sum(x * x for x in a) == pytest.approx(1.0, abs=1e-4)  # unit length
        cosine = [sum(x * y for x, y in zip(a, v, strict=True)) for v in (b, c)]
        assert cosine[0] > cosine[1]
        info = embedder.get_model_info()
        assert info.dimension == 384 and info.pooling == "mean" and info.normalized
        assert info.precision == "fp32" and info.verifier is None
        with pytest.raises(FailedPrecondition, match="verifier"):
            embedder.score([("a", "b")])  # this embedder serves no verifier
        with pytest.raises(InvalidArgument):
            embedder.embed([""])
        with pytest.raises(TypeError):
            embedder.embed("not a list")


async def test_embedder_methods_asyncio(embedder_process: str) -> None:
    async with AsyncEmbedderClient(embedder_process) as embedder:
        results = await asyncio.gather(*(embedder.embed([f"text {i}"]) for i in range(8)))
        assert all(r.count == 1 and r.dimension == 384 for r in results)
        assert (await embedder.get_model_info()).model_id
        with pytest.raises(FailedPrecondition):
            await embedder.score([("a", "b")])


async def test_an_async_client_belongs_to_one_event_loop(cache_server: ServiceProcess) -> None:
    cache = AsyncCacheClient(cache_server.address)
    await cache.get_stats()

    def elsewhere() -> None:
        async def call() -> None:
            await cache.get_stats()

        asyncio.run(call())

    with pytest.raises(RuntimeError, match="event loop"):
        await asyncio.to_thread(elsewhere)
    await cache.close()
    with pytest.raises(RuntimeError, match="closed"):
        await cache.get_stats()
