"""What an operator looks at and moves, as protobuf: the recent decisions on a cache
(ListDecisions), the caches the caller administers (ListCaches), and caches exported and
imported (ExportEntries, ImportEntries: cache_server.transfer)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from cache_server import access
from cache_server.cache import SemanticCache
from cache_server.decisions import Decision, check_limit
from cache_server.entries import check_cache_id
from cache_server.entry_pb import cost_of, stored_entry_pb
from cache_server.transfer import ExportChunk, ImportOutcome, Incoming
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


async def export_entries(
    cache: SemanticCache, request: pb.ExportEntriesRequest
) -> AsyncIterator[pb.ExportEntriesChunk]:
    """The cache's entries, or those of every cache the caller administers (cache_id "")."""
    if request.cache_id:
        ids = [request.cache_id]
    else:
        ids = [c for c in await cache.store.cache_ids() if access.administers(c)]
    for cache_id in ids:
        chunks = cache.transfer.export(
            cache_id, request.batch_size, with_vectors=not request.omit_vectors
        )
        async for chunk in chunks:
            yield export_chunk_pb(chunk)


def export_chunk_pb(chunk: ExportChunk) -> pb.ExportEntriesChunk:
    return pb.ExportEntriesChunk(
        cache_id=chunk.cache_id,
        total=chunk.total,
        model=chunk.model,
        dimension=chunk.dimension,
        entries=[
            pb.ExportedEntry(
                entry=stored_entry_pb(entry),
                vector=vector.astype("<f4").tobytes() if vector is not None else b"",
            )
            for entry, vector in chunk.entries
        ],
    )


async def import_entries(
    cache: SemanticCache, request: pb.ImportEntriesRequest
) -> pb.ImportEntriesResponse:
    incoming = [
        Incoming(
            prompt=e.entry.prompt,
            response=e.entry.response,
            attributes=dict(e.entry.attributes),
            created_at=e.entry.created_at,
            expires_at=e.entry.expires_at or None,
            cost=cost_of(e.entry),
            vector=e.vector,
        )
        for e in request.entries
    ]
    outcome = await cache.transfer.import_batch(request.cache_id, request.model, incoming)
    return import_outcome_pb(outcome)


def import_outcome_pb(outcome: ImportOutcome) -> pb.ImportEntriesResponse:
    return pb.ImportEntriesResponse(
        imported=outcome.imported,
        reembedded=outcome.reembedded,
        skipped_expired=outcome.skipped_expired,
        refused=[
            pb.ImportRefusal(index=r.index, reason=r.reason, message=r.message)
            for r in outcome.refused
        ],
    )
