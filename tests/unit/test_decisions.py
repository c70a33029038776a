"""The recent decisions of a cache server (cache_server.decisions): the ring itself (bounded,
truncated, per cache, no answers) and what SemanticCache records in it for each look-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cache_server.cache import CachePolicy, SemanticCache
from cache_server.decisions import PROMPT_CHARS, Asked, DecisionLog, check_limit
from cache_server.entries import CacheEntry, InvalidInputError
from cache_server.learned_thresholds.engine import VerifiedEngine
from cache_server.learned_thresholds.judge import ExactJudge
from cache_server.learned_thresholds.policy import VerifiedSettings
from cache_server.lookup import Hit, Strategy
from cache_server.store.embedded import EmbeddedStore
from tests.unit.fakes import Clock, Parts
from tests.unit.test_verified_cache import ASKED, PARAPHRASE, TopicEmbedder, TopicUpstream

ASK = Asked("How do I learn Python?", "query", "threshold", 0.85)


def hit(prompt: str, similarity: float = 0.9, *, cache_id: str = "c") -> Hit:
    entry = CacheEntry(cache_id, "e" * 32, prompt, "THE ANSWER, never kept", created_at=1.0)
    return Hit(entry, similarity, Strategy.SEMANTIC)


def test_the_ring_keeps_the_newest_decisions_of_a_cache_newest_first() -> None:
    log = DecisionLog(capacity=3)
    for i in range(5):
        log.record("c", ASK._replace(prompt=f"question {i}"), 0.002, float(i))
    assert log.kept("c") == 3 and log.capacity == 3
    assert [d.prompt for d in log.recent("c")] == ["question 4", "question 3", "question 2"]
    assert [d.at for d in log.recent("c", 2)] == [4.0, 3.0]
    assert log.recent("never") == [] and log.kept("never") == 0


def test_prompts_are_truncated_and_answers_never_kept() -> None:
    log = DecisionLog()
    long_prompt = "x" * (PROMPT_CHARS + 10)
    log.record("c", ASK._replace(prompt=long_prompt), 0.004, 1.0, served=[hit("y" * 600)])
    (decision,) = log.recent("c")
    assert decision.prompt == "x" * PROMPT_CHARS and decision.prompt_truncated
    assert decision.entry_prompt == "y" * PROMPT_CHARS and decision.entry_prompt_truncated
    assert decision.outcome == "hit" and decision.latency_ms == pytest.approx(4.0)
    assert "ANSWER" not in repr(log.recent("c"))
    log.record("c", ASK, 0.001, 2.0)
    short = log.recent("c")[0]
    assert short.prompt == ASK.prompt and not short.prompt_truncated


def test_the_outcome_and_entry_follow_one_rule() -> None:
    log = DecisionLog()
    near, nearer = hit("near", 0.8), hit("nearer", 0.9)
    log.record("c", ASK, 0.001, 1.0, served=[nearer], found=[nearer, near])
    log.record("c", ASK, 0.001, 2.0, unsure=[near], found=[nearer, near])
    log.record("c", ASK, 0.001, 3.0, found=[nearer])  # the verified policy rejected it
    log.record("c", ASK, 0.001, 4.0)  # a threshold miss: nothing near enough
    miss, rejected, explored, served = log.recent("c")
    assert (served.outcome, served.entry_prompt, served.similarity) == ("hit", "nearer", 0.9)
    assert (explored.outcome, explored.entry_prompt) == ("explored", "near")
    assert (rejected.outcome, rejected.entry_prompt) == ("miss", "nearer")
    assert (miss.outcome, miss.entry_id, miss.similarity, miss.strategy) == ("miss", "", 0.0, None)
    assert served.strategy == "semantic" and served.entry_id == "e" * 32


def test_caches_are_kept_apart_and_bounded_and_a_flush_forgets_one() -> None:
    log = DecisionLog(capacity=10, max_caches=2)
    log.record("a", ASK._replace(prompt="asked in a"), 0.001, 1.0)
    log.record("b", ASK._replace(prompt="asked in b"), 0.001, 2.0)
    assert [d.prompt for d in log.recent("a")] == ["asked in a"]
    assert [d.prompt for d in log.recent("b")] == ["asked in b"]
    log.record("a", ASK, 0.001, 3.0)  # a decided on last: b is the one forgotten next
    log.record("c", ASK, 0.001, 4.0)
    assert len(log) == 2 and log.kept("b") == 0 and log.kept("a") == 2
    log.forget("a")
    assert log.recent("a") == [] and log.kept("c") == 1


def test_recording_never_raises() -> None:
    log = DecisionLog()
    log.record("c", ASK._replace(prompt=None), 0.001, 1.0)  # type: ignore[arg-type]
    assert log.kept("c") == 0


def test_the_limit_is_checked() -> None:
    assert check_limit(0) == 50 and check_limit(1000) == 1000
    with pytest.raises(InvalidInputError, match="limit 1001"):
        check_limit(1001)


async def test_queries_record_a_miss_a_semantic_hit_and_an_exact_hit(parts: Parts) -> None:
    cache, _, _, clock = parts
    await cache.query("c", "How do I learn Python?")
    clock.now += 1
    await cache.query("c", "What is the best way to learn Python?")
    await cache.query("c", "How do I learn Python?")
    exact, semantic, miss = cache.decisions.recent("c")
    assert (miss.outcome, miss.route, miss.entry_id, miss.policy) == (
        "miss",
        "query",
        "",
        "threshold",
    )
    assert miss.threshold == 0.85 and miss.latency_ms > 0
    assert semantic.outcome == "hit" and semantic.strategy == "semantic"
    assert semantic.entry_prompt == "How do I learn Python?" and semantic.similarity >= 0.85
    assert semantic.at == clock.now
    assert (exact.strategy, exact.similarity) == ("exact", 1.0)
    assert "LLM says" not in repr(cache.decisions.recent("c"))
    assert cache.decisions.recent("other") == []


async def test_searches_record_their_route_and_a_flush_clears_the_cache_s(parts: Parts) -> None:
    cache, _, _, _ = parts
    await cache.set("c", "How do I cook rice?", "Boil it.")
    await cache.search("c", "How to cook rice properly?", threshold=0.5)
    await cache.search("c", "How do I learn Python?", route="chat")
    chat, search = cache.decisions.recent("c")
    assert (search.route, search.outcome, search.entry_prompt) == (
        "search",
        "hit",
        "How do I cook rice?",
    )
    assert (search.threshold, search.policy) == (0.5, "threshold")
    assert (chat.route, chat.outcome) == ("chat", "miss")
    await cache.query("kept", "How do I learn Python?")
    await cache.flush("c")
    assert cache.decisions.recent("c") == [] and cache.decisions.kept("kept") == 1


@pytest.fixture()
async def verified(tmp_path: Path) -> AsyncIterator[SemanticCache]:
    store = EmbeddedStore(tmp_path)
    await store.open()
    engine = VerifiedEngine(
        VerifiedSettings(default_policy="verified", max_error_rate=0.10, audit_rate=0.0),
        store,
        ExactJudge(),
    )
    cache = SemanticCache(
        store, TopicEmbedder(), TopicUpstream(), CachePolicy(), Clock(), verified=engine
    )
    yield cache
    await cache.drain()
    await store.close()


async def test_an_exploration_names_the_entry_it_judged(verified: SemanticCache) -> None:
    first = await verified.query("c", ASKED)
    second = await verified.query("c", PARAPHRASE)
    assert second.explored
    explored, miss = verified.decisions.recent("c")
    assert miss.outcome == "miss" and miss.policy == "verified"
    assert (explored.outcome, explored.entry_id, explored.entry_prompt) == (
        "explored",
        first.entry_id,
        ASKED,
    )
    assert explored.threshold == 0.10  # the bound, under the verified policy
    assert 0 < explored.similarity < 1
