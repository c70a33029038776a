"""Re-embedding a cache after a model change of the same dimension (issue 23, finding 6):
SemanticCache over the real embedded store, with a fake embedder whose model the test swaps."""

from __future__ import annotations

import numpy as np
import pytest

from cache_server.embedder_client import EmbedderModel
from cache_server.lookup import Strategy
from cache_server.reindex import Progress, in_progress
from cache_server.store.base import ModelMismatchError
from tests.unit.fakes import DIM, Parts

QUESTIONS = [f"Question number {i} about caching?" for i in range(7)]


async def test_a_stopped_reindex_is_continued_and_then_the_cache_serves_again(
    parts: Parts,
) -> None:
    cache, embedder, upstream, _ = parts
    cache.policy = type(cache.policy)(max_cache_size=100)
    for question in QUESTIONS:
        await cache.query("", question)
    await cache.query("", "How do I learn Python?")
    assert await cache.store.vector_model("default") == "fake"
    held_ids = sorted(await cache.store.entry_ids("default"))
    total = len(held_ids)
    assert total >= 7
    embedder.model = EmbedderModel("fake-tuned", DIM, False, onnx_sha256="b" * 64)
    with pytest.raises(ModelMismatchError):
        await cache.search("", "What is the best way to learn Python?")

    run = cache.reindexer.run("default", batch_size=3)
    seen = [await anext(run)]
    await run.aclose()  # stopped after the first batch (a killed run)
    assert seen[0].done == 3 and seen[0].total == total and not seen[0].finished
    held = await cache.store.vector_model("default")
    assert in_progress(held) == ("b" * 64, held_ids[2])
    with pytest.raises(ModelMismatchError):  # half re-embedded: still refused
        await cache.search("", "What is the best way to learn Python?")

    calls = embedder.calls
    steps = [step async for step in cache.reindexer.run("default", batch_size=3)]
    batches = [min(total, 3 * n) for n in range(2, (total + 2) // 3 + 1)]
    assert [(s.done, s.finished) for s in steps] == [(n, False) for n in batches] + [(total, True)]
    assert embedder.calls == calls + len(batches)  # only what was left
    assert await cache.store.vector_model("default") == "b" * 64
    found = await cache.search("", "What is the best way to learn Python?")
    assert found.hits and found.hits[0].strategy is Strategy.SEMANTIC
    again = [step async for step in cache.reindexer.run("default")]
    assert again == [Progress("default", total, total, "b" * 64, True)]  # nothing left
    asked = len(upstream.calls)
    fresh = await cache.query("", "How do I cook rice?")  # new entries are stored again
    assert fresh.hit is None and len(upstream.calls) == asked + 1
    await cache.drain()


async def test_the_new_vectors_replace_the_old_ones(parts: Parts) -> None:
    cache, embedder, _, _ = parts
    await cache.query("", "How do I cook rice?")
    (entry_id,) = await cache.store.entry_ids("default")
    embedder.model = EmbedderModel("fake-tuned", DIM, False, onnx_sha256="c" * 64)
    shifted = np.zeros(DIM, dtype=np.float32)
    shifted[DIM - 1] = 1.0

    async def embed(texts: object) -> np.ndarray:
        return np.array([shifted], dtype=np.float32)

    cache.reindexer._embed = embed  # a model that puts every prompt somewhere else
    [step async for step in cache.reindexer.run("default")]
    found = await cache.store.search("default", shifted, 1, 0.99, {}, 0.0)
    assert [(e.id, round(s, 4)) for e, s in found] == [(entry_id, 1.0)]
    await cache.drain()


async def test_what_the_verified_policy_learned_is_forgotten_with_the_old_model(
    parts: Parts,
) -> None:
    """Observed similarities belong to the model that measured them: a cache re-embedded with
    another starts again from that model's prior, keeping its entries and policy."""
    from cache_server.learned_thresholds import evidence

    cache, embedder, _, _ = parts
    await cache.query("", "How do I cook rice?")
    (entry_id,) = await cache.store.entry_ids("default")
    entry = await cache.store.get("default", entry_id, 2e9)
    assert entry is not None
    await cache.store.observe("default", entry_id, entry.created_at, evidence.record(0.9, True))
    assert await cache.store.pooled_evidence("default") != b""
    embedder.model = EmbedderModel("fake-tuned", DIM, False, onnx_sha256="d" * 64)
    [step async for step in cache.reindexer.run("default")]
    assert await cache.store.pooled_evidence("default") == b""
    assert await cache.store.evidence("default", entry_id) == b""
    assert await cache.store.entry_ids("default") == [entry_id]
    await cache.drain()
