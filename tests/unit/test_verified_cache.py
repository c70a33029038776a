"""The verified hit policy inside SemanticCache (real embedded store, fake embedder and LLM):
what it serves, what an exploration stores and learns, and where its evidence comes from."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from cache_server.cache import CachePolicy, SemanticCache
from cache_server.entries import InvalidInputError, prompt_key
from cache_server.learned_thresholds import evidence
from cache_server.learned_thresholds.engine import VerifiedEngine
from cache_server.learned_thresholds.judge import ExactJudge
from cache_server.learned_thresholds.policy import VerifiedSettings
from cache_server.lookup import Strategy
from cache_server.store.embedded import EmbeddedStore
from tests.unit.fakes import DIM, GROUPS, Clock, FakeEmbedder, FakeUpstream

ASKED = "How do I learn Python?"
PARAPHRASE = "What is the best way to learn Python?"


def topic(text: str) -> int | None:
    key = text.strip().lower().rstrip("?")
    return GROUPS.get(key, 0 if "python" in key else 1 if "rice" in key else None)


class TopicEmbedder(FakeEmbedder):
    """Every question about Python (or rice) gets nearly the same vector."""

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = await super().embed(texts)
        for i, text in enumerate(texts):
            group = topic(text)
            if group is not None:
                seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
                v = np.random.default_rng(seed).standard_normal(DIM) * 0.15
                v[group] += 3.0
                vectors[i] = v / np.linalg.norm(v)
        return vectors


class TopicUpstream(FakeUpstream):
    """Answers every question of one topic (tests.unit.fakes.GROUPS) alike, as a
    deterministic LLM would; `wrong_topics` answer each question differently."""

    def __init__(self) -> None:
        super().__init__()
        self.wrong_topics: set[int] = set()

    async def complete(self, prompt: str) -> str:
        self.calls.append(prompt)
        await asyncio.sleep(self.delay_s)
        group = topic(prompt)
        if group is None or group in self.wrong_topics:
            return f"LLM says: {prompt}"
        return f"answer about topic {group}"


@pytest.fixture()
async def verified(tmp_path: Path) -> AsyncIterator[tuple[SemanticCache, TopicUpstream]]:
    store = EmbeddedStore(tmp_path)
    await store.open()
    upstream = TopicUpstream()
    engine = VerifiedEngine(
        VerifiedSettings(default_policy="verified", max_error_rate=0.10, audit_rate=0.0),
        store,
        ExactJudge(),
    )
    cache = SemanticCache(store, TopicEmbedder(), upstream, CachePolicy(), Clock(), verified=engine)
    yield cache, upstream
    await cache.drain()
    await store.close()


async def test_a_paraphrase_explores_first_and_its_entry_starts_with_what_was_learned(
    verified: tuple[SemanticCache, TopicUpstream],
) -> None:
    cache, upstream = verified
    first = await cache.query("c", ASKED)
    second = await cache.query("c", PARAPHRASE)
    assert first.hit is None and not first.explored
    assert second.hit is None and second.explored and second.policy == "verified"
    assert second.response == "answer about topic 0"
    assert len(upstream.calls) == 2
    stats = await cache.stats_of("c")
    assert stats.cache_size == 2  # the paraphrase has its own entry: a repeat is exact
    assert (stats.counters.explorations, stats.counters.explorations_wrong) == (1, 0)
    near = await cache.store.evidence("c", first.entry_id)
    assert evidence.count(near) == 1
    assert await cache.store.evidence("c", second.entry_id) == near  # inherited
    repeat = await cache.query("c", PARAPHRASE)
    assert repeat.hit is not None and repeat.hit.similarity == 1.0
    assert len(upstream.calls) == 2


async def test_evidence_makes_the_entry_served_and_a_wrong_topic_never_is(
    verified: tuple[SemanticCache, TopicUpstream],
) -> None:
    cache, upstream = verified
    await cache.query("c", ASKED)
    served = None
    for i in range(40):  # new paraphrases: each explores until the evidence is enough
        result = await cache.query("c", f"How do I learn Python, question {i}?")
        if result.hit is not None:
            served = result
            break
        assert result.explored
    assert served is not None, "never served after 40 right explorations"
    assert served.hit is not None and served.hit.strategy is Strategy.SEMANTIC
    assert served.response == "answer about topic 0" and not served.explored
    assert (await cache.stats_of("c")).counters.verified_hits == 1

    upstream.wrong_topics.add(1)  # each rice question has an answer of its own
    await cache.query("c", "how do I cook rice")
    explored = await cache.query("c", "how to cook rice properly")
    assert explored.explored and explored.response == "LLM says: how to cook rice properly"
    assert (await cache.stats_of("c")).counters.explorations_wrong == 1
    # Judged wrong, the fresh answer got an entry of its own: a repeat is served that one.
    again = await cache.query("c", "how to cook rice properly")
    assert again.hit is not None and again.response == "LLM says: how to cook rice properly"


async def test_concurrent_explorations_of_one_prompt_ask_the_llm_once(
    verified: tuple[SemanticCache, TopicUpstream],
) -> None:
    cache, upstream = verified
    await cache.query("c", ASKED)
    upstream.delay_s = 0.05
    results = await asyncio.gather(*(cache.query("c", PARAPHRASE) for _ in range(5)))
    assert all(r.explored for r in results)
    assert len(upstream.calls) == 2
    await cache.drain()
    assert evidence.count(await cache.store.pooled_evidence("c")) == 1


async def test_the_threshold_policy_per_request_and_the_cache_policy(
    verified: tuple[SemanticCache, TopicUpstream],
) -> None:
    cache, _ = verified
    await cache.query("c", ASKED)
    plain = await cache.query("c", PARAPHRASE, policy="threshold", threshold=0.5)
    assert plain.hit is not None and plain.policy == "threshold"
    assert (await cache.cache_policy("c")).source == "server"
    set_ = await cache.set_cache_policy("c", "threshold", None)
    assert (set_.name, set_.source) == ("threshold", "cache")
    assert (await cache.query("c", PARAPHRASE, threshold=0.5)).policy == "threshold"
    back = await cache.set_cache_policy("c", None, None)
    assert (back.name, back.source) == ("verified", "server")
    with pytest.raises(InvalidInputError, match="max_error_rate"):
        await cache.query("c", PARAPHRASE, max_error_rate=0.9)


async def test_a_search_left_unsure_learns_from_the_answer_the_application_stores(
    verified: tuple[SemanticCache, TopicUpstream],
) -> None:
    cache, _ = verified
    await cache.set("c", ASKED, "answer about topic 0")
    found = await cache.search("c", PARAPHRASE)
    assert found.hits == []  # not sure yet: the application asks its LLM
    itself = await cache.search("c", f"  {ASKED}")  # the stored prompt: its own repeat
    assert [hit.entry.prompt for hit in itself.hits] == [ASKED]
    await cache.set("c", PARAPHRASE, "answer about topic 0")
    await cache.drain()
    stats = await cache.stats_of("c")
    assert stats.counters.explorations == 1 and stats.counters.explorations_wrong == 0


async def test_feedback_on_a_served_answer_is_an_observation(
    verified: tuple[SemanticCache, TopicUpstream],
) -> None:
    cache, _ = verified
    first = await cache.query("c", ASKED)
    served = await cache.query("c", PARAPHRASE, policy="threshold")  # served for it
    assert served.hit is not None and served.entry_id == first.entry_id
    await cache.drain()  # the served mark is written after the answer has gone
    outcome = await cache.feedback("c", first.entry_id, PARAPHRASE, correct=False)
    assert outcome.learned and not outcome.duplicate
    await cache.drain()
    similarities, labels = evidence.decode(await cache.store.evidence("c", first.entry_id))
    assert labels.tolist() == [0.0] and similarities[0] > 0.8
    await cache.flush("c")
    assert await cache.store.pooled_evidence("c") == b""


async def test_feedback_is_evidence_not_votes(
    verified: tuple[SemanticCache, TopicUpstream],
) -> None:
    """Issue 23, finding 4: 150 identical `correct: true` reports on an answer never served
    for the prompt moved it from P(right) 0.003 to 0.984, and it was then served. A report
    counts once per (answer, prompt, reporter), and moves the policy only when served."""
    cache, upstream = verified
    first = await cache.query("c", ASKED)
    outcomes = [
        await cache.feedback("c", first.entry_id, PARAPHRASE, correct=True) for _ in range(150)
    ]
    await cache.drain()
    asked = len(upstream.calls)
    again = await cache.query("c", PARAPHRASE)
    assert again.hit is None and len(upstream.calls) == asked + 1  # still not sure: explored
    assert not any(o.learned for o in outcomes)  # never served for PARAPHRASE
    assert [o.duplicate for o in outcomes] == [False] + [True] * 149
    # One reporter's verdict counts once; another reporter's is its own.
    rice = await cache.query("c", "How do I cook rice?")
    served = await cache.query("c", "How to cook rice properly", policy="threshold")
    assert served.hit is not None and served.entry_id == rice.entry_id
    await cache.drain()
    asked_for = served.query
    outcomes = [
        await cache.feedback("c", rice.entry_id, asked_for, correct=True, reporter="app-1")
        for _ in range(3)
    ]
    assert [(o.learned, o.duplicate) for o in outcomes] == [
        (True, False),
        (False, True),
        (False, True),
    ]
    other = await cache.feedback("c", rice.entry_id, asked_for, correct=True, reporter="b")
    assert other.learned and not other.duplicate
    flipped = await cache.feedback("c", rice.entry_id, asked_for, correct=False, reporter="b")
    assert not flipped.duplicate and not flipped.learned  # kept (exclusion), learned once
    back = await cache.feedback("c", rice.entry_id, asked_for, correct=True, reporter="b")
    wrong = await cache.feedback("c", rice.entry_id, asked_for, correct=False, reporter="b")
    assert not back.duplicate and not wrong.duplicate  # a change of mind, each time heard
    excluded = await cache.store.excluded("c", prompt_key(asked_for))
    assert rice.entry_id in excluded  # the latest verdict rules: wrong
    await cache.drain()
    _, labels = evidence.decode(await cache.store.evidence("c", rice.entry_id))
    assert labels.tolist() == [1.0, 1.0]


async def test_an_entry_is_judged_with_its_own_caches_curve_across_refits(tmp_path: Path) -> None:
    """Issue 23, finding 5: entry fits were memoised by `id(pool.curve)`; once a refit freed a
    curve, CPython reused its address for another cache's, and an entry was judged with that
    cache's curve (P 0.996 where its own pool gave 0.003). Two caches with opposite pools,
    refitted before every look-up: each decision must equal a fresh engine's."""
    from cache_server.entries import CacheEntry, entry_id
    from cache_server.learned_thresholds.engine import POOL_REFRESH_S
    from cache_server.learned_thresholds.policy import HitPolicy

    policy = HitPolicy("verified", 0.05, "request", "hits")
    store = EmbeddedStore(tmp_path)
    await store.open()
    now = [0.0]
    settings = VerifiedSettings()
    engine = VerifiedEngine(settings, store, ExactJudge(), monotonic=lambda: now[0])
    entries: dict[str, CacheEntry] = {}
    for cache_id, right in (("all-right", True), ("all-wrong", False)):
        entry = CacheEntry(cache_id, entry_id(cache_id, ASKED, {}), ASKED, "answer", {}, 1.0)
        vector = np.zeros(DIM, dtype=np.float32)
        vector[0] = 1.0
        await store.put(entry, vector, 10, 1.0, max_caches=10)
        for _ in range(80):  # into the pool only: the entry itself keeps no evidence
            await store.observe(cache_id, entry.id, -1.0, evidence.record(0.964, right))
        entries[cache_id] = entry
    stale = []
    last: dict[str, float] = {}
    for _ in range(200):
        now[0] += POOL_REFRESH_S + 1  # every pool is refitted at its next use
        for cache_id, entry in entries.items():
            decided = await engine.decide(cache_id, entry, 0.964, policy)
            fresh = VerifiedEngine(settings, store, ExactJudge())
            expected = await fresh.decide(cache_id, entry, 0.964, policy)
            if abs(decided.p_wrong - expected.p_wrong) > 1e-9:
                stale.append((cache_id, decided.p_wrong, expected.p_wrong))
            last[cache_id] = decided.p_wrong
    await store.close()
    assert stale == []
    assert last["all-right"] < 0.05 < 0.9 < last["all-wrong"]  # opposite pools, opposite beliefs


async def test_the_learned_thresholds_of_stats_are_fitted_off_the_event_loop(
    verified: tuple[SemanticCache, TopicUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23, finding 8: GetStats refitted up to 1,000 entry curves on the event loop that
    every look-up shares. The entries' beliefs are worked out in a worker thread."""
    import threading

    from cache_server.learned_thresholds import model
    from cache_server.learned_thresholds.policy import HitPolicy

    cache, _ = verified
    for question in ("How do I learn Python?", "How do I cook rice?"):
        first = await cache.query("c", question)
        for similarity in (0.91, 0.93, 0.95):
            await cache.store.observe(
                "c",
                first.entry_id,
                (await cache.store.get("c", first.entry_id, 2e9)).created_at,  # type: ignore[union-attr]
                evidence.record(similarity, True),
            )
    loop_thread = threading.get_ident()
    fits_on_loop: list[int] = []
    fits: list[int] = []
    real_fit = model.entry_belief

    def watched_fit(*args: object, **kwargs: object) -> tuple[float, float]:
        fits.append(1)
        if threading.get_ident() == loop_thread:
            fits_on_loop.append(1)
        return real_fit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "entry_belief", watched_fit)
    learned = await cache.verified.learned("c", HitPolicy("verified", 0.10, "request", "hits"))
    assert learned.entries == 2 and learned.observations == 6
    assert fits and not fits_on_loop
