"""What an operator looks at, as protobuf: the recent decisions on a cache (ListDecisions) and
the caches the caller administers (ListCaches)."""

from __future__ import annotations

from cache_server import access
from cache_server.cache import SemanticCache
from cache_server.decisions import Decision, check_limit
from cache_server.entries import check_cache_id
from protos.semcache.cache.v1 import cache_pb2 as pb

_STRATEGY_TO_PB = {
    "exact": pb.SEARCH_STRATEGY_EXACT,
    "semantic": pb.SEARCH_STRATEGY_SEMANTIC,
}


def decision_pb(decision: Decision) -> pb.Decision:
    return pb.Decision(
        at=decision.at,
        prompt=decision.prompt,
        prompt_truncated=decision.prompt_truncated,
        entry_id=decision.entry_id,
        entry_prompt=decision.entry_prompt,
        entry_prompt_truncated=decision.entry_prompt_truncated,
        similarity=decision.similarity,
        strategy=_STRATEGY_TO_PB.get(decision.strategy or "", pb.SEARCH_STRATEGY_UNSPECIFIED),
        policy=decision.policy,
        outcome=decision.outcome,
        route=decision.route,
        latency_ms=decision.latency_ms,
        threshold=decision.threshold,
    )


async def list_decisions(
    cache: SemanticCache, request: pb.ListDecisionsRequest
) -> pb.ListDecisionsResponse:
    cache_id = check_cache_id(request.cache_id)
    limit = check_limit(request.limit)
    log = cache.decisions
    return pb.ListDecisionsResponse(
        decisions=[decision_pb(d) for d in log.recent(cache_id, limit)],
        kept=log.kept(cache_id),
        capacity=log.capacity,
    )


async def list_caches(cache: SemanticCache) -> pb.ListCachesResponse:
    """The caches that hold entries or have a policy, those the caller administers only, with
    their size now and their policy."""
    held = set(await cache.store.cache_ids())
    ids = sorted(held.union(await cache.store.policy_cache_ids()))
    summaries = []
    for cache_id in ids:
        if not access.administers(cache_id):
            continue
        size = await cache.size_of(cache_id) if cache_id in held else 0
        policy = await cache.cache_policy(cache_id)
        summaries.append(
            pb.CacheSummary(
                cache_id=cache_id,
                cache_size=size,
                policy=policy.name,
                policy_source="cache" if policy.source == "cache" else "server",
            )
        )
    return pb.ListCachesResponse(caches=summaries)
