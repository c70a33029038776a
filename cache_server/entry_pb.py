"""A found entry and its strategy as protobuf, for every RPC that answers with entries, and
what entries cost and saved."""

from __future__ import annotations

from cache_server.entries import AnswerCost, CacheEntry
from cache_server.lookup import Hit, Strategy
from cache_server.savings import Savings
from protos.semcache.cache.v1 import cache_pb2 as pb

STRATEGY_TO_PB = {
    Strategy.EXACT: pb.SEARCH_STRATEGY_EXACT,
    Strategy.SEMANTIC: pb.SEARCH_STRATEGY_SEMANTIC,
}
STRATEGY_FROM_PB = {v: k for k, v in STRATEGY_TO_PB.items()}


def entry_pb(hit: Hit) -> pb.Entry:
    return stored_entry_pb(hit.entry)


def stored_entry_pb(e: CacheEntry) -> pb.Entry:
    """An entry as stored (an export's), outside any look-up."""
    return pb.Entry(
        id=e.id,
        prompt=e.prompt,
        response=e.response,
        attributes=dict(e.attributes),
        created_at=e.created_at,
        expires_at=e.expires_at or 0.0,
        cost=cost_pb(e.cost),
    )


def cost_pb(cost: AnswerCost | None) -> pb.AnswerCost | None:
    if cost is None:
        return None
    return pb.AnswerCost(
        prompt_tokens=cost.prompt_tokens,
        completion_tokens=cost.completion_tokens,
        upstream_seconds=cost.upstream_seconds,
        model=cost.model,
    )


def cost_of(message: pb.Entry) -> AnswerCost | None:
    """The cost an entry message carries, or None."""
    if not message.HasField("cost"):
        return None
    c = message.cost
    return AnswerCost(c.prompt_tokens, c.completion_tokens, c.upstream_seconds, c.model)


def savings_pb(savings: Savings) -> pb.Savings:
    return pb.Savings(
        hits_with_cost=savings.hits_with_cost,
        hits_without_cost=savings.hits_without_cost,
        prompt_tokens=savings.prompt_tokens,
        completion_tokens=savings.completion_tokens,
        upstream_seconds=savings.upstream_seconds,
        cost=savings.cost,
        currency=savings.currency,
        hits_unpriced=savings.hits_unpriced,
    )
