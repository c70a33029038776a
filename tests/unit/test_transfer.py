"""Moving caches (cache_server.transfer) over the real embedded store with a fake embedder:
what an export reads, and the rules of an import: vectors used as they are only when their
model is the one served and they fit, times and cost kept, expired entries skipped, each
entry breaking a limit refused on its own with its reason, never an eviction, and an import
twice the same as once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cache_server.cache import CachePolicy, SemanticCache
from cache_server.entries import AnswerCost, CacheEntry, InvalidInputError, entry_id
from cache_server.store.base import ModelMismatchError
from cache_server.transfer import CacheTransfer, ExportChunk, Incoming
from tests.unit.fakes import DIM, Parts

COST = AnswerCost(7, 30, 0.8, "gpt-4o-mini")


async def fill(cache: SemanticCache) -> None:
    await cache.set("support", "How do I learn Python", "read the tutorial", attributes={"l": "en"})
    await cache.set("support", "How do I cook rice", "boil it", ttl_s=3600)
    await cache.set_scoped("support", "Why is the sky blue", "Rayleigh", attributes={}, cost=COST)


async def exported(transfer: CacheTransfer, cache_id: str, batch: int = 0) -> list[ExportChunk]:
    return [chunk async for chunk in transfer.export(cache_id, batch)]


def incoming_of(chunks: list[ExportChunk]) -> list[Incoming]:
    return [
        Incoming(
            e.prompt,
            e.response,
            e.attributes,
            e.created_at,
            e.expires_at,
            e.cost,
            v.astype("<f4").tobytes() if v is not None else b"",
        )
        for chunk in chunks
        for e, v in chunk.entries
    ]


def transfer_with(parts: Parts, **policy: int) -> CacheTransfer:
    cache, embedder, _, clock = parts
    served = cache.transfer._served_model
    return CacheTransfer(cache.store, embedder.embed, served, CachePolicy(**policy), clock)


async def test_an_export_reads_every_live_entry_with_its_vector_and_model(parts: Parts) -> None:
    cache, embedder, _, clock = parts
    await fill(cache)
    chunks = await exported(cache.transfer, "support", batch=2)
    assert [len(c.entries) for c in chunks] == [2, 1]
    assert {(c.total, c.model, c.dimension) for c in chunks} == {(3, "fake", DIM)}
    entries = {e.prompt: (e, v) for c in chunks for e, v in c.entries}
    rice, rice_vector = entries["How do I cook rice"]
    assert rice.expires_at == clock.now + 3600 and rice.created_at == clock.now
    assert entries["Why is the sky blue"][0].cost == COST
    assert rice_vector is not None
    np.testing.assert_allclose(rice_vector, (await embedder.embed(["How do I cook rice"]))[0])
    ids = [e.id for c in chunks for e, _ in c.entries]
    assert ids == sorted(ids)  # id order, as a re-embedding goes

    clock.now += 3601  # the rice has expired
    assert len([e for c in await exported(cache.transfer, "support") for e in c.entries]) == 2
    (empty,) = await exported(cache.transfer, "nothing-here")
    assert (empty.total, empty.entries, empty.model) == (0, [], "")
    bare = [c async for c in cache.transfer.export("support", with_vectors=False)]
    assert all(v is None for c in bare for _, v in c.entries) and bare[0].model == ""
    with pytest.raises(InvalidInputError, match="batch_size 2000"):
        await exported(cache.transfer, "support", batch=2000)


async def test_an_import_of_the_same_model_uses_the_vectors_and_keeps_times_and_cost(
    parts: Parts,
) -> None:
    cache, embedder, _, clock = parts
    await fill(cache)
    chunks = await exported(cache.transfer, "support")
    calls = embedder.calls
    clock.now += 60
    outcome = await transfer_with(parts, max_cache_size=10).import_batch(
        "copy", "fake", incoming_of(chunks)
    )
    assert (outcome.imported, outcome.reembedded, outcome.refused) == (3, 0, [])
    assert embedder.calls == calls  # no prompt embedded again
    for source, _ in chunks[0].entries:
        copy = await cache.store.get("copy", entry_id("copy", source.prompt, source.attributes), 0)
        assert copy == dataclasses.replace(source, cache_id="copy", id=copy.id if copy else "")
    found = await cache.search("copy", "What is the best way to learn Python", threshold=0.8)
    assert [h.entry.response for h in found.hits] == ["read the tutorial"]

    again = await transfer_with(parts, max_cache_size=10).import_batch(
        "copy", "fake", incoming_of(chunks)
    )
    assert again.imported == 3 and await cache.size_of("copy") == 3  # replaced, not doubled


async def test_vectors_of_another_model_or_that_do_not_fit_are_embedded_again(
    parts: Parts,
) -> None:
    cache, embedder, _, clock = parts
    await fill(cache)
    entries = incoming_of(await exported(cache.transfer, "support"))
    transfer = transfer_with(parts, max_cache_size=10)
    calls = embedder.calls
    other = await transfer.import_batch("other-model", "another-model", entries)
    assert (other.imported, other.reembedded) == (3, 3) and embedder.calls == calls + 1

    long = np.ones(DIM, dtype="<f4")  # not unit length
    nan = np.full(DIM, np.nan, dtype="<f4")
    broken = [
        dataclasses.replace(entries[0], vector=entries[0].vector[:-4]),  # a dimension short
        dataclasses.replace(entries[1], vector=long.tobytes()),
        dataclasses.replace(entries[2], vector=nan.tobytes()),
    ]
    mended = await transfer.import_batch("mended", "fake", broken)
    assert (mended.imported, mended.reembedded) == (3, 3)
    vectors = await cache.store.entries_with_vectors(
        "mended", await cache.store.entry_ids("mended"), clock.now
    )
    for _, vector in vectors:
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


async def test_each_entry_breaking_a_limit_is_refused_alone_with_its_reason(parts: Parts) -> None:
    cache, _, _, clock = parts
    now = clock.now
    good = Incoming("How do I cook rice", "boil it", {}, now - 10, None, None, b"")

    def bad(**changes: object) -> Incoming:
        return dataclasses.replace(good, **changes)  # type: ignore[arg-type]

    batch = [
        bad(prompt="p" * 9000),
        bad(response=" "),
        bad(attributes={"bad name": "x"}),
        bad(expires_at=now - 1),  # already expired: skipped, not refused
        bad(prompt="first", expires_at=now + 1e10),
        bad(prompt="second", cost=AnswerCost(1, 1, float("nan"), "m")),
        bad(prompt="twice", response="first answer"),
        bad(prompt="twice", response="second answer"),
        bad(prompt="one"),
        bad(prompt="two", attributes={"chat_scope": "abc"}),  # the server's own: kept
        bad(prompt="three"),
        bad(prompt="four"),  # one over max_cache_size 4
    ]
    transfer = transfer_with(parts, max_cache_size=4)
    outcome = await transfer.import_batch("c", "", batch)
    assert outcome.skipped_expired == 1 and outcome.imported == 4
    assert [(r.index, r.reason) for r in outcome.refused] == [
        (0, "prompt"),
        (1, "response"),
        (2, "attributes"),
        (4, "times"),
        (5, "cost"),
        (6, "duplicate"),
        (11, "max_cache_size"),
    ]
    assert "9000 characters; the limit is 8192" in outcome.refused[0].message
    assert "an import never evicts" in outcome.refused[-1].message
    twice = await cache.store.find_exact("c", "twice", {}, now)
    assert twice is not None and twice.response == "second answer"
    assert twice.created_at == now - 10

    # Into the full cache: replacements still go in, new entries do not, nothing is evicted.
    held = sorted(await cache.store.entry_ids("c"))
    again = await transfer.import_batch("c", "", [bad(prompt="one", response="new"), good])
    assert again.imported == 1 and [r.reason for r in again.refused] == ["max_cache_size"]
    assert sorted(await cache.store.entry_ids("c")) == held

    few = transfer_with(parts, max_caches=1)  # "c" is the one cache there may be
    refused = await few.import_batch("d", "", [good])
    assert refused.imported == 0 and [r.reason for r in refused.refused] == ["max_caches"]
    with pytest.raises(InvalidInputError, match="at most 1024 per call"):
        await transfer.import_batch("c", "", [good] * 1025)


async def test_a_cache_of_another_model_refuses_the_whole_batch(parts: Parts) -> None:
    cache, _, _, clock = parts
    held = CacheEntry("c", entry_id("c", "old", {}), "old", "answer", created_at=clock.now)
    vector = np.zeros(DIM, dtype=np.float32)
    vector[0] = 1.0
    await cache.store.put(held, vector, 10, clock.now, max_caches=10, model="older-model")
    good = Incoming("new", "answer", {}, clock.now, None, None, b"")
    with pytest.raises(ModelMismatchError, match="make reindex"):
        await transfer_with(parts, max_cache_size=10).import_batch("c", "fake", [good])
    assert await cache.store.entry_ids("c") == [held.id]
