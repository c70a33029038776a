"""Savings: each hit credits what producing its answer cost upstream (tokens, seconds, money),
priced by the model that produced it; answers stored by Set count hits and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from cache_server.cache import CachePolicy, SemanticCache
from cache_server.entries import AnswerCost
from cache_server.savings import Price, PriceTable, cost_of
from cache_server.settings import CacheSettings
from cache_server.store.embedded import EmbeddedStore
from tests.unit.fakes import Clock, FakeEmbedder, FakeUpstream

PRICES = PriceTable({"fake-llm": Price(prompt=2.0, completion=8.0)}, "EUR")


def test_cost_of_reads_the_upstream_usage_and_the_model_it_names() -> None:
    answer = {"model": "gpt-4o-2024", "usage": {"prompt_tokens": 12, "completion_tokens": 30}}
    assert cost_of(answer, "gpt-4o", 0.8) == AnswerCost(12, 30, 0.8, "gpt-4o-2024")
    assert cost_of({"usage": {"prompt_tokens": 3}}, "asked", 0.1) == AnswerCost(3, 0, 0.1, "asked")
    only_total = {"usage": {"total_tokens": 9}}
    assert cost_of(only_total, "m", 0.2) == AnswerCost(9, 0, 0.2, "m")
    assert cost_of({"choices": []}, "m", 0.2) is None
    assert cost_of({"usage": {"prompt_tokens": -1, "completion_tokens": "x"}}, "m", 1) is None


def test_a_cost_survives_its_json_and_a_bad_one_is_none() -> None:
    cost = AnswerCost(5, 7, 1.25, "gpt-4o-mini")
    assert AnswerCost.from_json(cost.to_json()) == cost
    assert AnswerCost.from_json(None) is None
    assert AnswerCost.from_json("") is None
    assert AnswerCost.from_json("[1, 2]") is None


def test_prices_match_exact_names_then_the_longest_prefix() -> None:
    table = PriceTable.parse(
        '{"gpt-4o": {"prompt": 2.5, "completion": 10}, "gpt-4o*": {"prompt": 1, '
        '"completion": 1}, "gpt-4o-mini*": {"prompt": 0.15, "completion": 0.6}}'
    )
    assert table.price("gpt-4o") == Price(2.5, 10.0)
    assert table.price("gpt-4o-2024-08-06") == Price(1.0, 1.0)
    assert table.price("gpt-4o-mini-2024-07-18") == Price(0.15, 0.6)
    assert table.price("claude") is None
    # Per million tokens.
    assert table.money(AnswerCost(1_000_000, 500_000, 1.0, "gpt-4o")) == pytest.approx(7.5)
    assert table.money(AnswerCost(10, 10, 1.0, "claude")) is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        ('{"m": {"prompt": -1}}', "non-negative"),
        ('{"m": {"input": 1}}', "'prompt': p"),
    ],
)
def test_a_bad_price_table_is_refused_at_start_saying_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        PriceTable.parse(text)
    with pytest.raises(ValueError, match=says):
        CacheSettings(prices=text)


async def test_every_hit_credits_the_cost_of_the_answer_it_served(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    await store.open()
    upstream = FakeUpstream()
    upstream.delay_s = 0.05
    cache = SemanticCache(store, FakeEmbedder(), upstream, CachePolicy(), Clock(), prices=PRICES)
    try:
        miss = await cache.query("c", "How do I learn Python?")
        assert miss.hit is None
        answer = miss.response  # "LLM says: How do I learn Python?": 7 words
        exact = await cache.query("c", "How do I learn Python?")
        semantic = await cache.query("c", "What is the best way to learn Python?")
        assert exact.hit is not None and semantic.hit is not None
        cost = semantic.hit.entry.cost
        assert cost is not None
        assert (cost.prompt_tokens, cost.completion_tokens) == (5, len(answer.split()))
        assert cost.upstream_seconds >= 0.05 and cost.model == "fake-llm"
        found = await cache.search("c", "What is the best way to learn Python?")
        assert found.hits

        saved = (await cache.stats_of("c")).savings
        assert saved.hits_with_cost == 3 and saved.hits_without_cost == 0
        assert saved.prompt_tokens == 3 * 5
        assert saved.completion_tokens == 3 * 7
        assert saved.upstream_seconds == pytest.approx(3 * cost.upstream_seconds, abs=1e-5)
        assert saved.cost == pytest.approx(3 * (5 * 2.0 + 7 * 8.0) / 1e6)
        assert saved.currency == "EUR" and saved.hits_unpriced == 0

        # An answer the application stored itself has no known cost: counted, adds nothing.
        await cache.set("c", "How do I cook rice?", "Boil it.")
        assert (await cache.query("c", "How to cook rice properly")).hit is not None
        after = (await cache.stats_of("c")).savings
        assert after.hits_without_cost == 1 and after.prompt_tokens == saved.prompt_tokens

        # A miss saves nothing; a flush starts the savings again.
        await cache.query("c", "Something unrelated entirely")
        assert (await cache.stats_of("c")).savings.hits_with_cost == 3
        await cache.flush("c")
        assert (await cache.stats_of("c")).savings.hits_with_cost == 0
    finally:
        await store.close()


async def test_a_model_without_a_price_saves_tokens_and_no_money(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    await store.open()
    cache = SemanticCache(store, FakeEmbedder(), FakeUpstream(), CachePolicy(), Clock())
    try:
        await cache.query("c", "How do I learn Python?")
        await cache.query("c", "How do I learn Python?")
        saved = (await cache.stats_of("c")).savings
        assert saved.hits_with_cost == 1 and saved.hits_unpriced == 1
        assert saved.prompt_tokens == 5 and saved.cost == 0.0 and saved.currency == "USD"
    finally:
        await store.close()


async def test_the_cost_is_kept_with_the_entry_across_a_restart(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    await store.open()
    cache = SemanticCache(store, FakeEmbedder(), FakeUpstream(), CachePolicy(), Clock())
    await cache.query("c", "How do I learn Python?")
    await store.close()
    store = EmbeddedStore(tmp_path)
    await store.open()
    cache = SemanticCache(store, FakeEmbedder(), FakeUpstream(), CachePolicy(), Clock())
    try:
        hit = await cache.query("c", "What is the best way to learn Python?")
        assert hit.hit is not None and hit.hit.entry.cost is not None
        assert hit.hit.entry.cost.prompt_tokens == 5
    finally:
        await store.close()
