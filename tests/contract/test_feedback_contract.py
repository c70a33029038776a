"""The feedback part of the store contract, for every backend: reports are durable, the
exclusion follows the latest report on the answer that was judged, and a flush removes it all."""

from __future__ import annotations

import asyncio

import pytest

from cache_server.entries import CacheEntry, prompt_key
from cache_server.feedback import Feedback, is_excluded
from cache_server.store import embedded_feedback, redis_feedback
from cache_server.store.base import CacheStore
from tests.contract.stores import NOW, StoreFactory, entry, put, vec


def report(e: CacheEntry, prompt: str, correct: bool, at: float) -> Feedback:
    return Feedback(
        id=f"fb-{e.cache_id}-{prompt}-{at}",
        cache_id=e.cache_id,
        entry_id=e.id,
        entry_created_at=e.created_at,
        prompt=prompt,
        prompt_key=prompt_key(prompt),
        entry_prompt=e.prompt,
        entry_response=e.response,
        correct=correct,
        created_at=at,
    )


async def test_a_wrong_report_excludes_the_entry_for_that_prompt_only(store: CacheStore) -> None:
    e = entry("how do I learn Python?")
    await put(store, e, vec(1), 10, NOW)
    assert await store.excluded("c1", prompt_key("how do I learn Java?")) == {}
    await store.add_feedback(report(e, "how do I learn Java?", False, NOW + 1))
    excluded = await store.excluded("c1", prompt_key("  how do I learn Java? "))
    assert excluded == {e.id: e.created_at} and is_excluded(e, excluded)
    assert await store.excluded("c1", prompt_key("how do I learn Rust?")) == {}
    assert await store.excluded("c2", prompt_key("how do I learn Java?")) == {}
    # A later "right" report for the same prompt lifts it.
    await store.add_feedback(report(e, "how do I learn Java?", True, NOW + 2))
    assert await store.excluded("c1", prompt_key("how do I learn Java?")) == {}


async def test_reports_survive_a_reopen_and_a_new_answer_ends_the_exclusion(
    factory: StoreFactory,
) -> None:
    first = await factory()
    e = entry("what is the capital of France?")
    await put(first, e, vec(1), 10, NOW)
    await first.add_feedback(report(e, "what is the capital of Spain?", False, NOW + 1))
    await first.close()
    again = await factory()
    try:
        excluded = await again.excluded("c1", prompt_key("what is the capital of Spain?"))
        assert is_excluded(e, excluded)
        listed = await again.list_feedback("c1")
        assert [(r.prompt, r.entry_prompt, r.correct) for r in listed] == [
            ("what is the capital of Spain?", "what is the capital of France?", False)
        ]
        assert await again.list_feedback() == listed
        # Stored again (a new answer, a new created_at): the report judged the old one.
        newer = entry("what is the capital of France?", created=NOW + 5)
        await put(again, newer, vec(1), 10, NOW + 5)
        stored = await again.get("c1", e.id, NOW + 5)
        assert stored is not None and not is_excluded(stored, excluded)
    finally:
        await again.close()


async def test_a_flush_removes_the_reports_and_the_exclusions(store: CacheStore) -> None:
    e = entry("q1")
    other = entry("q1", cache_id="c2")
    await put(store, e, vec(1), 10, NOW)
    await put(store, other, vec(1), 10, NOW)
    await store.add_feedback(report(e, "q2", False, NOW + 1))
    await store.add_feedback(report(other, "q2", False, NOW + 1))
    await store.flush("c1")
    assert await store.excluded("c1", prompt_key("q2")) == {}
    assert await store.list_feedback("c1") == []
    assert [r.cache_id for r in await store.list_feedback()] == ["c2"]
    assert await store.excluded("c2", prompt_key("q2")) == {other.id: other.created_at}


async def test_a_deleted_entry_stored_again_is_served_again(store: CacheStore) -> None:
    e = entry("how do I reset my password?")
    await put(store, e, vec(1), 10, NOW)
    await store.add_feedback(report(e, "how do I change my email?", False, NOW + 1))
    assert await store.delete("c1", e.id)
    again = entry("how do I reset my password?", created=NOW + 2)
    await put(store, again, vec(1), 10, NOW + 2)
    excluded = await store.excluded("c1", prompt_key("how do I change my email?"))
    stored = await store.get("c1", e.id, NOW + 2)
    assert stored is not None and not is_excluded(stored, excluded)
    # The report itself is training data: still there.
    assert [r.prompt for r in await store.list_feedback("c1")] == ["how do I change my email?"]


async def test_reports_are_bounded_and_an_exclusion_goes_with_its_report(
    store: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (embedded_feedback, redis_feedback):
        monkeypatch.setattr(module, "MAX_FEEDBACK_PER_CACHE", 3)
    monkeypatch.setattr(redis_feedback.RedisFeedback, "feedback_page", 2)  # read in pages
    e = entry("q1")
    await put(store, e, vec(1), 10, NOW)
    await store.add_feedback(report(e, "p1", False, NOW + 1))
    await store.add_feedback(report(e, "p2", False, NOW + 2))
    await store.add_feedback(report(e, "p1", False, NOW + 3))  # p1's exclusion made again
    await store.add_feedback(report(e, "p3", True, NOW + 4))  # the first report goes
    assert [r.prompt for r in await store.list_feedback("c1")] == ["p2", "p1", "p3"]
    assert is_excluded(e, await store.excluded("c1", prompt_key("p1")))
    assert is_excluded(e, await store.excluded("c1", prompt_key("p2")))
    await store.add_feedback(report(e, "p4", True, NOW + 5))  # p2's only report goes
    assert await store.excluded("c1", prompt_key("p2")) == {}
    assert is_excluded(e, await store.excluded("c1", prompt_key("p1")))
    assert [r.prompt for r in await store.list_feedback("c1")] == ["p1", "p3", "p4"]


async def test_marks_are_added_once_per_cache_and_go_with_a_flush(store: CacheStore) -> None:
    """What makes a report count once (issue 23, finding 4): a mark is new exactly once."""
    await put(store, entry("q", cache_id="c1"), vec(1), 10, NOW)
    await put(store, entry("q", cache_id="c2"), vec(1), 10, NOW)
    assert await store.mark("c1", ["a", "b", "a"], NOW) == [True, True, False]
    assert await store.mark("c1", ["a"], NOW + 1) == [False]
    assert await store.marked("c1", "a") and not await store.marked("c1", "c")
    assert not await store.marked("c2", "a")  # another cache's set
    assert await store.mark("c2", ["a"], NOW) == [True]
    assert await store.mark("never-held", ["a"], NOW) == [False]  # no cache, nothing kept
    assert not await store.marked("never-held", "a")
    await store.flush("c1")
    assert not await store.marked("c1", "a") and await store.marked("c2", "a")
    await put(store, entry("q", cache_id="c1"), vec(1), 10, NOW)
    assert await store.mark("c1", ["a"], NOW) == [True]  # a cache held anew starts empty


async def test_concurrent_marks_of_one_string_make_one_new(store: CacheStore) -> None:
    await put(store, entry("q"), vec(1), 10, NOW)
    results = await asyncio.gather(*(store.mark("c1", ["same"], NOW) for _ in range(8)))
    assert sorted(r[0] for r in results) == [False] * 7 + [True]
