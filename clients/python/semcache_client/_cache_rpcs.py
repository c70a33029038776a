"""The cache service's methods: which are idempotent (retried on UNAVAILABLE), their
requests built from keyword arguments, their replies turned into semcache_client.models.
Shared by the sync and the asyncio client."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from semcache_client._calls import Rpc
from semcache_client._stubs import CACHE_SERVICE, cache_pb
from semcache_client.models import (
    CachedData,
    CachePolicy,
    CacheStats,
    CacheSummary,
    ChatChunk,
    ChatCompletion,
    ChatEvent,
    ChatHit,
    ChatRoute,
    ChatStored,
    ChatUpstreamError,
    Decision,
    Entry,
    ErrorAccounting,
    FeedbackResult,
    HitPolicy,
    LearnedThresholds,
    QueryResult,
    RecentDecisions,
    ReindexProgress,
    SearchHit,
    SearchResult,
    SearchStrategy,
    ServerInfo,
    VerifierBand,
)

S = CACHE_SERVICE
# Query may ask the upstream LLM and store its answer: never repeated by the client.
QUERY = Rpc(
    S, "Query", cache_pb.QueryRequest, cache_pb.QueryResponse, idempotent=False, timeout="query"
)
SEARCH = Rpc(S, "Search", cache_pb.SearchRequest, cache_pb.SearchResponse, idempotent=True)
# The entry id is a function of cache, prompt and attributes: a repeat replaces it with itself.
SET = Rpc(S, "Set", cache_pb.SetRequest, cache_pb.SetResponse, idempotent=True)
# A repeat of a Delete whose first try was applied answers NOT_FOUND.
DELETE = Rpc(S, "Delete", cache_pb.DeleteRequest, cache_pb.DeleteResponse, idempotent=True)
DELETE_ENTRIES = Rpc(
    S,
    "DeleteEntries",
    cache_pb.DeleteEntriesRequest,
    cache_pb.DeleteEntriesResponse,
    idempotent=True,
    timeout="bulk",
)
FLUSH = Rpc(
    S, "Flush", cache_pb.FlushRequest, cache_pb.FlushResponse, idempotent=True, timeout="bulk"
)
GET_STATS = Rpc(S, "GetStats", cache_pb.GetStatsRequest, cache_pb.GetStatsResponse, idempotent=True)
GET_SERVER_INFO = Rpc(
    S,
    "GetServerInfo",
    cache_pb.GetServerInfoRequest,
    cache_pb.GetServerInfoResponse,
    idempotent=True,
)
# Each report is a record of its own (counted, exported): never repeated by the client.
SUBMIT_FEEDBACK = Rpc(
    S,
    "SubmitFeedback",
    cache_pb.SubmitFeedbackRequest,
    cache_pb.SubmitFeedbackResponse,
    idempotent=False,
)
SET_CACHE_POLICY = Rpc(
    S, "SetCachePolicy", cache_pb.SetCachePolicyRequest, cache_pb.CachePolicy, idempotent=True
)
GET_CACHE_POLICY = Rpc(
    S, "GetCachePolicy", cache_pb.GetCachePolicyRequest, cache_pb.CachePolicy, idempotent=True
)
LIST_DECISIONS = Rpc(
    S,
    "ListDecisions",
    cache_pb.ListDecisionsRequest,
    cache_pb.ListDecisionsResponse,
    idempotent=True,
)
LIST_CACHES = Rpc(
    S, "ListCaches", cache_pb.ListCachesRequest, cache_pb.ListCachesResponse, idempotent=True
)
# Progress of a re-embedding; repeating it continues where it stopped, but it is long and
# heavy: never repeated by the client.
REINDEX = Rpc(
    S,
    "Reindex",
    cache_pb.ReindexRequest,
    cache_pb.ReindexProgress,
    idempotent=False,
    timeout="bulk",
    server_streaming=True,
)
# Moving caches: the operator's program (cache_server.transfer_cli, `make export-cache`,
# `make import-cache`) calls these; the client offers no method of its own for them. An
# export is a long stream: never repeated. An import batch stores each entry under an id
# computed from it, so a repeat replaces what the first try stored.
EXPORT_ENTRIES = Rpc(
    S,
    "ExportEntries",
    cache_pb.ExportEntriesRequest,
    cache_pb.ExportEntriesChunk,
    idempotent=False,
    timeout="bulk",
    server_streaming=True,
)
IMPORT_ENTRIES = Rpc(
    S,
    "ImportEntries",
    cache_pb.ImportEntriesRequest,
    cache_pb.ImportEntriesResponse,
    idempotent=True,
    timeout="bulk",
)
# A stream of events; a miss asks the upstream LLM (and stores its answer), and events may
# have reached the caller before a failure: never repeated by the client.
CHAT = Rpc(
    S,
    "Chat",
    cache_pb.ChatRequest,
    cache_pb.ChatEvent,
    idempotent=False,
    timeout="query",
    server_streaming=True,
)

_POLICY_TO_PB = {
    None: cache_pb.HIT_POLICY_UNSPECIFIED,
    HitPolicy.THRESHOLD: cache_pb.HIT_POLICY_THRESHOLD,
    HitPolicy.VERIFIED: cache_pb.HIT_POLICY_VERIFIED,
}
_ACCOUNTING_TO_PB = {
    None: cache_pb.ERROR_ACCOUNTING_UNSPECIFIED,
    ErrorAccounting.HITS: cache_pb.ERROR_ACCOUNTING_HITS,
    ErrorAccounting.REQUESTS: cache_pb.ERROR_ACCOUNTING_REQUESTS,
}
_STRATEGY_TO_PB = {
    SearchStrategy.EXACT: cache_pb.SEARCH_STRATEGY_EXACT,
    SearchStrategy.SEMANTIC: cache_pb.SEARCH_STRATEGY_SEMANTIC,
}
_STRATEGY_FROM_PB = {value: key for key, value in _STRATEGY_TO_PB.items()}


def _policy(policy: HitPolicy | str | None) -> cache_pb.HitPolicy.ValueType:
    return _POLICY_TO_PB[HitPolicy(policy) if policy is not None else None]


def _accounting(
    accounting: ErrorAccounting | str | None,
) -> cache_pb.ErrorAccounting.ValueType:
    """None: unspecified (the cache's, else the server's); an unknown name: ValueError."""
    return _ACCOUNTING_TO_PB[ErrorAccounting(accounting) if accounting is not None else None]


def query_request(
    query: str,
    *,
    cache_id: str,
    use_cache: bool,
    similarity_threshold: float | None,
    attributes: Mapping[str, str] | None,
    ttl_seconds: float | None,
    policy: HitPolicy | str | None,
    max_error_rate: float | None,
    error_accounting: ErrorAccounting | str | None,
) -> cache_pb.QueryRequest:
    return cache_pb.QueryRequest(
        cache_id=cache_id,
        query=query,
        use_cache=use_cache,
        similarity_threshold=similarity_threshold,
        attributes=dict(attributes or {}),
        ttl_seconds=ttl_seconds,
        policy=_policy(policy),
        max_error_rate=max_error_rate,
        error_accounting=_accounting(error_accounting),
    )


def search_request(
    prompt: str,
    *,
    cache_id: str,
    similarity_threshold: float | None,
    max_results: int,
    attributes: Mapping[str, str] | None,
    strategies: Sequence[SearchStrategy | str],
    policy: HitPolicy | str | None,
    max_error_rate: float | None,
    error_accounting: ErrorAccounting | str | None,
) -> cache_pb.SearchRequest:
    return cache_pb.SearchRequest(
        cache_id=cache_id,
        prompt=prompt,
        similarity_threshold=similarity_threshold,
        max_results=max_results,
        attributes=dict(attributes or {}),
        strategies=[_STRATEGY_TO_PB[SearchStrategy(s)] for s in strategies],
        policy=_policy(policy),
        max_error_rate=max_error_rate,
        error_accounting=_accounting(error_accounting),
    )


def set_request(
    prompt: str,
    response: str,
    *,
    cache_id: str,
    attributes: Mapping[str, str] | None,
    ttl_seconds: float | None,
) -> cache_pb.SetRequest:
    return cache_pb.SetRequest(
        cache_id=cache_id,
        prompt=prompt,
        response=response,
        attributes=dict(attributes or {}),
        ttl_seconds=ttl_seconds,
    )


def chat_request(
    prompt: str,
    body: Mapping[str, Any],
    *,
    cache_id: str,
    attributes: Mapping[str, str] | None,
    stream: bool | None,
    cacheable: bool,
    use_cache: bool,
    similarity_threshold: float | None,
    ttl_seconds: float | None,
) -> cache_pb.ChatRequest:
    """`body` is sent as JSON as it is (the server refuses anything but an object); `stream`
    None follows the body's own `"stream"`."""
    if stream is None:
        stream = isinstance(body, Mapping) and body.get("stream") is True
    return cache_pb.ChatRequest(
        cache_id=cache_id,
        prompt=prompt,
        attributes=dict(attributes or {}),
        similarity_threshold=similarity_threshold,
        use_cache=use_cache,
        cacheable=cacheable,
        body_json=json.dumps(body, ensure_ascii=False, allow_nan=False),
        stream=stream,
        ttl_seconds=ttl_seconds,
    )


def policy_request(
    policy: HitPolicy | str | None,
    *,
    cache_id: str,
    max_error_rate: float | None,
    error_accounting: ErrorAccounting | str | None,
) -> cache_pb.SetCachePolicyRequest:
    return cache_pb.SetCachePolicyRequest(
        cache_id=cache_id,
        policy=_policy(policy),
        max_error_rate=max_error_rate,
        error_accounting=_accounting(error_accounting),
    )


def _strategy(value: cache_pb.SearchStrategy.ValueType) -> SearchStrategy | None:
    return _STRATEGY_FROM_PB.get(value)


def entry(pb: cache_pb.Entry) -> Entry:
    return Entry(
        id=pb.id,
        prompt=pb.prompt,
        response=pb.response,
        attributes=dict(pb.attributes),
        created_at=pb.created_at,
        expires_at=pb.expires_at or None,
    )


def query_result(pb: cache_pb.QueryResponse) -> QueryResult:
    cached = None
    if pb.HasField("cached_data"):
        c = pb.cached_data
        cached = CachedData(
            cached_response=c.cached_response,
            similarity_score=c.similarity_score,
            cached_query=c.cached_query,
            cache_timestamp=c.cache_timestamp,
            entry_id=c.entry_id,
            strategy=_strategy(c.strategy),
        )
    return QueryResult(
        query=pb.query,
        response=pb.response,
        cache_hit=pb.cache_hit,
        cached_data=cached,
        embedding_dimension=pb.embedding_dimension,
        processing_time=pb.processing_time,
        entry_id=pb.entry_id,
        explored=pb.explored,
        policy=pb.policy,
    )


def search_result(pb: cache_pb.SearchResponse) -> SearchResult:
    return SearchResult(
        hits=[SearchHit(entry(h.entry), h.similarity, _strategy(h.strategy)) for h in pb.hits],
        embedding_dimension=pb.embedding_dimension,
        processing_time=pb.processing_time,
    )


def cache_stats(pb: cache_pb.GetStatsResponse) -> CacheStats:
    learned = None
    if pb.HasField("learned"):
        x = pb.learned
        learned = LearnedThresholds(
            entries=x.entries,
            observations=x.observations,
            pooled_observations=x.pooled_observations,
            threshold_p10=x.threshold_p10,
            threshold_p50=x.threshold_p50,
            threshold_p90=x.threshold_p90,
            entries_not_serving=x.entries_not_serving,
            pool_threshold=x.pool_threshold,
            serving_level=x.serving_level,
            prior=x.prior,
            shift=x.shift,
            window_requests=x.window_requests,
            window_candidates=x.window_candidates,
        )
    return CacheStats(
        cache_id=pb.cache_id,
        cache_size=pb.cache_size,
        max_cache_size=pb.max_cache_size,
        current_threshold=pb.current_threshold,
        hits=pb.hits,
        misses=pb.misses,
        hit_rate=pb.hit_rate,
        evictions=pb.evictions,
        expirations=pb.expirations,
        lookup_p50_ms=pb.lookup_p50_ms,
        lookup_p95_ms=pb.lookup_p95_ms,
        lookup_p99_ms=pb.lookup_p99_ms,
        lookups_measured=pb.lookups_measured,
        threshold_source=pb.threshold_source,
        reported_wrong=pb.reported_wrong,
        reported_right=pb.reported_right,
        policy=pb.policy,
        max_error_rate=pb.max_error_rate,
        verified_hits=pb.verified_hits,
        explorations=pb.explorations,
        explorations_wrong=pb.explorations_wrong,
        learned=learned,
        error_accounting=pb.error_accounting,
    )


def server_info(pb: cache_pb.GetServerInfoResponse) -> ServerInfo:
    verifier = None
    if pb.HasField("verifier"):
        v = pb.verifier
        verifier = VerifierBand(v.model_id, v.low, v.high, v.threshold, v.source, v.candidates)
    return ServerInfo(
        embedder_model_id=pb.embedder_model_id,
        embedding_dimension=pb.embedding_dimension,
        embedder_fallback_model=pb.embedder_fallback_model,
        upstream=pb.upstream,
        demo_responder=pb.demo_responder,
        upstream_model=pb.upstream_model,
        store_backend=pb.store_backend,
        default_threshold=pb.default_threshold,
        max_cache_size=pb.max_cache_size,
        embedder_serving=pb.embedder_serving,
        embedder_addresses=list(pb.embedder_addresses),
        store_serving=pb.store_serving,
        threshold_source=pb.threshold_source,
        verifier=verifier,
    )


def cache_policy(pb: cache_pb.CachePolicy) -> CachePolicy:
    return CachePolicy(
        pb.cache_id, pb.policy, pb.max_error_rate, pb.source, error_accounting=pb.error_accounting
    )


def recent_decisions(pb: cache_pb.ListDecisionsResponse) -> RecentDecisions:
    return RecentDecisions(
        decisions=[
            Decision(
                at=d.at,
                prompt=d.prompt,
                prompt_truncated=d.prompt_truncated,
                entry_id=d.entry_id,
                entry_prompt=d.entry_prompt,
                entry_prompt_truncated=d.entry_prompt_truncated,
                similarity=d.similarity,
                strategy=_strategy(d.strategy),
                policy=d.policy,
                outcome=d.outcome,
                route=d.route,
                latency_ms=d.latency_ms,
                threshold=d.threshold,
            )
            for d in pb.decisions
        ],
        kept=pb.kept,
        capacity=pb.capacity,
    )


def cache_summaries(pb: cache_pb.ListCachesResponse) -> list[CacheSummary]:
    return [CacheSummary(c.cache_id, c.cache_size, c.policy, c.policy_source) for c in pb.caches]


def feedback_result(pb: cache_pb.SubmitFeedbackResponse) -> FeedbackResult:
    return FeedbackResult(
        pb.feedback_id,
        pb.entry_id,
        pb.entry_prompt,
        pb.correct,
        pb.served_for_prompt,
        pb.duplicate,
        pb.learned,
    )


def reindex_request(cache_id: str, batch_size: int) -> cache_pb.ReindexRequest:
    """`cache_id` "": every cache."""
    return cache_pb.ReindexRequest(cache_id=cache_id, batch_size=batch_size)


def reindex_progress(pb: cache_pb.ReindexProgress) -> ReindexProgress:
    return ReindexProgress(pb.cache_id, pb.done, pb.total, pb.model, pb.finished)


def reindexed(steps: Sequence[ReindexProgress]) -> list[ReindexProgress]:
    """Each cache's last progress: the finished steps."""
    return [step for step in steps if step.finished]


def chat_route(metadata: Any) -> ChatRoute:
    """A Chat call's route, from its initial metadata."""
    given = {str(k): str(v) for k, v in (metadata or ())}
    return ChatRoute(given.get("semcache-chat-scope"), given.get("semcache-uncacheable"))


def chat_event(pb: cache_pb.ChatEvent) -> ChatEvent | None:
    """The typed event; None for an event this client does not know (a newer server's)."""
    kind = pb.WhichOneof("event")
    if kind == "hit":
        hit = pb.hit
        return ChatHit(entry(hit.entry), hit.similarity, _strategy(hit.strategy))
    if kind == "chunk_json":
        return ChatChunk(pb.chunk_json)
    if kind == "completion_json":
        return ChatCompletion(pb.completion_json)
    if kind == "upstream_error":
        failure = pb.upstream_error
        return ChatUpstreamError(failure.status, failure.body, failure.message)
    if kind == "stored":
        return ChatStored(pb.stored.entry_id or None)
    return None
