"""What a cache saves: the upstream cost of each answer it serves instead of asking again.

When an answer is stored after an upstream call, the call's cost goes with it (AnswerCost: the
upstream's `usage` and the call's wall time). Every hit on that entry credits the cost to its
cache: the store's counters (shared by replicas, reset by a Flush; GetStats reads them) and
this process's Prometheus counters. Money comes from the price table (CACHE_PRICES): prices
per million prompt and completion tokens, per model, in one currency; the model is the one that
produced the answer, priced at the time of the hit. An answer stored by Set has no known cost:
its hits are counted apart and add nothing else.

`credit` is the one place a hit becomes savings (called by SemanticCache's look-up
bookkeeping for every hit, whatever the route); `Savings.of` reads them back for GetStats.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from cache_server.entries import AnswerCost
from cache_server.metrics import REGISTRY

TOKENS_SAVED = Counter(
    "semcache_cache_tokens_saved_total",
    "Upstream tokens not spent because a stored answer was served, by cache and kind "
    "(prompt, completion), from the usage the upstream reported when it produced the answer",
    ["cache", "kind"],
    registry=REGISTRY,
)
SECONDS_SAVED = Counter(
    "semcache_cache_upstream_seconds_saved_total",
    "Upstream waiting not spent (the upstream latency of the answers served), seconds, by cache",
    ["cache"],
    registry=REGISTRY,
)
COST_SAVED = Counter(
    "semcache_cache_cost_saved_total",
    "Money not spent upstream, in the price table's currency (CACHE_PRICE_CURRENCY, USD by "
    "default; CACHE_PRICES per million tokens), by cache",
    ["cache"],
    registry=REGISTRY,
)
SAVED_HITS = Counter(
    "semcache_cache_saved_hits_total",
    "Hits by whether the served answer's upstream cost is known (cost=known) or not "
    "(cost=unknown: stored by Set, or by an upstream that reported no usage)",
    ["cache", "cost"],
    registry=REGISTRY,
)

# The store's counters (integers: seconds in microseconds, money in billionths).
HITS_WITH_COST = "saved_hits_with_cost"
HITS_WITHOUT_COST = "saved_hits_without_cost"
HITS_UNPRICED = "saved_hits_unpriced"
PROMPT_TOKENS = "saved_prompt_tokens"
COMPLETION_TOKENS = "saved_completion_tokens"
UPSTREAM_MICROSECONDS = "saved_upstream_us"
COST_NANOS = "saved_cost_nanos"


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class Usage:
    """An OpenAI `usage` object, as far as it says: tokens of the prompt, of the completion,
    and in all (the total it reports, else the sum). The one reader of upstream usage: what a
    key spends (cache_server.spending) and what an answer cost (cost_of) both come from it."""

    prompt: int
    completion: int
    total: int

    @classmethod
    def of(cls, usage: object) -> Usage | None:
        if not isinstance(usage, Mapping):
            return None
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        total = _count(usage.get("total_tokens"))
        if prompt is None and completion is None:
            if total is None:
                return None
            return cls(total, 0, total)  # only a total: counted as prompt tokens
        parts = (prompt or 0) + (completion or 0)
        return cls(prompt or 0, completion or 0, total if total is not None else parts)


def cost_of(answer: Mapping[str, Any], asked_model: str, seconds: float) -> AnswerCost | None:
    """The cost of an OpenAI chat completion (or the last chunk of a stream, which carries the
    `usage` when asked with include_usage) that took `seconds`; None when it reports no usage.
    The model is the one the answer names, else the one asked for."""
    usage = Usage.of(answer.get("usage"))
    if usage is None:
        return None
    named = answer.get("model")
    model = named if isinstance(named, str) and named else asked_model
    return AnswerCost(usage.prompt, usage.completion, max(0.0, seconds), model)


@dataclass(frozen=True)
class Price:
    """Per million tokens, in the table's currency."""

    prompt: float
    completion: float


class PriceTable:
    """Prices per model: exact names, then the longest prefix ending in `*` ("gpt-4o*")."""

    def __init__(self, prices: Mapping[str, Price], currency: str = "USD") -> None:
        self.currency = currency
        self._exact = {k: v for k, v in prices.items() if not k.endswith("*")}
        self._prefixes = sorted(
            ((k[:-1], v) for k, v in prices.items() if k.endswith("*")),
            key=lambda kv: -len(kv[0]),
        )

    @classmethod
    def parse(cls, text: str | None, currency: str = "USD") -> PriceTable:
        """From CACHE_PRICES: a JSON object {model: {"prompt": p, "completion": c}}, prices
        per million tokens. Raises ValueError with what is wrong."""
        if not text or not text.strip():
            return cls({}, currency)
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"prices are not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError('prices must be a JSON object {"model": {"prompt": .., ...}}')
        prices: dict[str, Price] = {}
        for model, price in raw.items():
            if not isinstance(price, dict) or set(price) - {"prompt", "completion"}:
                raise ValueError(f"price of {model!r} must be {{'prompt': p, 'completion': c}}")
            values = [price.get("prompt", 0), price.get("completion", 0)]
            if not all(isinstance(v, int | float) and v >= 0 for v in values):
                raise ValueError(f"prices of {model!r} must be non-negative numbers")
            prices[str(model)] = Price(float(values[0]), float(values[1]))
        return cls(prices, currency)

    def price(self, model: str) -> Price | None:
        found = self._exact.get(model)
        if found is not None:
            return found
        return next((p for prefix, p in self._prefixes if model.startswith(prefix)), None)

    def money(self, cost: AnswerCost) -> float | None:
        """What producing the answer cost, in the table's currency; None when unpriced."""
        price = self.price(cost.model)
        if price is None:
            return None
        return (cost.prompt_tokens * price.prompt + cost.completion_tokens * price.completion) / 1e6


def credit(cache_id: str, cost: AnswerCost | None, prices: PriceTable) -> dict[str, int]:
    """A hit on an answer that cost `cost` (None: unknown): counts it in Prometheus and returns
    the store counters to add with the hit."""
    if cost is None:
        SAVED_HITS.labels(cache_id, "unknown").inc()
        return {HITS_WITHOUT_COST: 1}
    SAVED_HITS.labels(cache_id, "known").inc()
    TOKENS_SAVED.labels(cache_id, "prompt").inc(cost.prompt_tokens)
    TOKENS_SAVED.labels(cache_id, "completion").inc(cost.completion_tokens)
    SECONDS_SAVED.labels(cache_id).inc(cost.upstream_seconds)
    counts = {
        HITS_WITH_COST: 1,
        PROMPT_TOKENS: cost.prompt_tokens,
        COMPLETION_TOKENS: cost.completion_tokens,
        UPSTREAM_MICROSECONDS: round(cost.upstream_seconds * 1e6),
    }
    money = prices.money(cost)
    if money is None:
        counts[HITS_UNPRICED] = 1
    else:
        COST_SAVED.labels(cache_id).inc(money)
        counts[COST_NANOS] = round(money * 1e9)
    return counts


@dataclass(frozen=True)
class Savings:
    """What a cache's hits saved since its last Flush (from the store's counters)."""

    hits_with_cost: int = 0
    hits_without_cost: int = 0
    hits_unpriced: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_seconds: float = 0.0
    cost: float = 0.0
    currency: str = "USD"

    @classmethod
    def of(cls, counts: Mapping[str, int], currency: str) -> Savings:
        return cls(
            hits_with_cost=int(counts.get(HITS_WITH_COST, 0)),
            hits_without_cost=int(counts.get(HITS_WITHOUT_COST, 0)),
            hits_unpriced=int(counts.get(HITS_UNPRICED, 0)),
            prompt_tokens=int(counts.get(PROMPT_TOKENS, 0)),
            completion_tokens=int(counts.get(COMPLETION_TOKENS, 0)),
            upstream_seconds=int(counts.get(UPSTREAM_MICROSECONDS, 0)) / 1e6,
            cost=int(counts.get(COST_NANOS, 0)) / 1e9,
            currency=currency,
        )
